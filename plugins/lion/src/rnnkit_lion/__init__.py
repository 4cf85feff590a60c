"""rnnkit-lion: LION (Liu et al. 2024), linear group RNNs over window-sorted voxel groups, as
a point-cloud classifier over any diagonal-linear cell of the registry."""

from rnnkit_lion.data import POINT_SHAPES, SHAPES, point_clouds, point_shapes_data
from rnnkit_lion.model import LION, LIONLayer, lion_classifier
from rnnkit_lion.voxels import Groups, Voxels, generate, merge, voxelise, window_groups

__all__ = [
    "LION",
    "POINT_SHAPES",
    "SHAPES",
    "Groups",
    "LIONLayer",
    "Voxels",
    "generate",
    "lion_classifier",
    "merge",
    "point_clouds",
    "point_shapes_data",
    "voxelise",
    "window_groups",
]
