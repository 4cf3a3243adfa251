"""Layer 5: what people read. Evaluation of a checkpoint (`evaluation`), figures (`plots`), the image tester
widget (`widgets`), run tables (`runs_table`, no torch), run comparison (`compare`), the HTML index (`index`).
"""
