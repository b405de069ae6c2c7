"""The fused trunk: image-text bi-attention (``bi_attention``), DyHead blocks
(``dyhead``), the in-head BERT layers (``text_layer``), and the trunk that stacks them
into fused feature maps and fused text (``trunk``)."""
