"""The admin API's response models, one module per resource: pure pydantic (no FastAPI,
no SQLModel), so the Python client (edgefleet/client.py) imports them cheaply. Every
route declares one as its ``response_model`` and the client returns the same class
(docs/adr/0029-typed-client-from-shared-views.md)."""
