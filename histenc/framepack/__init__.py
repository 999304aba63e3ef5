"""FramePack: ``schedule`` (the grammar), ``packing`` (the context it packs), ``importance``, ``codebook`` (+D),
``hunyuan_checkpoint`` (FramePack's released HunyuanVideo files)."""
