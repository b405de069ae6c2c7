"""The language side: the text encoders (``text_encoder``), their attention masks
(``causal``), and the prompt-tuning offset added to the text features (``prompt_offset``)."""
