"""Limits of the network's arguments, shared by the objects and the config schema (torch-free)."""

# smallest input the backbones take (data.img_size)
MIN_IMG_SIZE = 8
# where the embedding head reads from: the flattened feature map (the paper) or the GAP vector
EMBEDDING_SOURCES = ("flatten", "pooled")
