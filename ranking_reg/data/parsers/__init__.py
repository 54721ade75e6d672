"""One parser per dataset: each reads the dataset's files as its archives unpack (DESIGN.md §4)
and returns an :class:`~ranking_reg.data.image_list.ImageListDataset`."""
