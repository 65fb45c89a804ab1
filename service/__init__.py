"""The BentoML service (`service.service:Generator`), its Pydantic schemas and the model-store import.

Imports `models`, never `training`: the serving image does not carry the training code's extras.
"""
