"""The values of the data options that name a behaviour (torch-free: the config schema reads
them, and so do the sampler and the transforms that implement them)."""

# data.augment: rrc = RandomResizedCrop (ours); resize_crop = the authors' 256 x 256 resize +
# random 224 crop; inception = TF-slim inception preprocessing
AUGMENTS = ("rrc", "resize_crop", "inception")
# data.class_sampling: uniform = class ids shuffled and taken in turn (the authors' loader);
# proportional = classes in proportion to their size
CLASS_SAMPLING = ("uniform", "proportional")
# data.gallery (set by metrics.knn.gallery): train = the training split is the kNN gallery of
# the test; none = no kNN metrics
GALLERIES = ("train", "none")
