"""The edge agent (SPEC "Roles": Edge): a small asyncio process for ARM64 that streams its data
through the edge stage to a cloud. Its runtime needs no FastAPI or uvicorn."""
