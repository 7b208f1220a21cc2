"""The cloud service: the master model, its optimizer and version counter, one WebSocket
session per edge (SPEC "Roles": Cloud). ``create_app`` builds the FastAPI app; ``run`` serves it.
"""
