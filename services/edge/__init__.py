"""The edge agent (docs/DESIGN.md §2): a small asyncio process for ARM64 that streams its data
through the edge stage to a cloud. Its runtime needs no FastAPI or uvicorn."""
