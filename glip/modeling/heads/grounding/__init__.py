"""The grounding (detection) head and its pieces: the head (``head``), anchors, the box
coder, ATSS target assignment (``assigner``), its losses (``loss``, ``region_distill``)
and post-processing to :class:`~glip.structures.Detections` (``postprocess``)."""
