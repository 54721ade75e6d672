"""One parser per dataset: each reads the dataset's files as its archives unpack (README: Datasets)
and returns an :class:`~ranking_reg.data.image_list.ImageListDataset`."""
