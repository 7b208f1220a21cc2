"""The cloud service: the master model, its optimizer and version counter, one WebSocket
session per edge (docs/DESIGN.md §2). ``create_app`` builds the FastAPI app; ``run`` serves it.
"""
