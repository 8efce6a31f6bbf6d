"""Training scripts for Gondola's on-device models (optional extra ``train``; never needed by
``shelfd``). Run from the project root, e.g. ``python -m training.product`` or
``python -m training.action``; see docs/vision-models.md."""
