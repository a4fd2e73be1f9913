"""One small `keras.applications` constructor per family, shared by the tests over real architectures.

`weights=None` (nothing is downloaded), 10 classes, the smallest input size each family accepts.
Every family is one entry here; tests parametrize over `FAMILIES` (or `CI_FAMILIES`, where the
heaviest ones are one environment variable away: `TFSPARSE_ALL_APPLICATIONS=1`).
"""

import os

import keras

# family -> (constructor name, input side, extra constructor arguments)
FAMILIES = {
    "vgg": ("VGG16", 32, {}),
    "resnet": ("ResNet50", 32, {}),
    "resnet_v2": ("ResNet50V2", 32, {}),
    "mobilenet": ("MobileNet", 32, {"alpha": 0.25}),
    "mobilenet_v2": ("MobileNetV2", 32, {"alpha": 0.35}),
    "mobilenet_v3": ("MobileNetV3Small", 32, {"alpha": 0.75}),
    "efficientnet": ("EfficientNetB0", 32, {}),
    "efficientnet_v2": ("EfficientNetV2B0", 32, {}),
    "densenet": ("DenseNet121", 32, {}),
    "inception_v3": ("InceptionV3", 75, {}),
    "inception_resnet_v2": ("InceptionResNetV2", 75, {}),
    "xception": ("Xception", 71, {}),
    "nasnet": ("NASNetMobile", 32, {}),
    "convnext": ("ConvNeXtTiny", 32, {}),
}

# The slowest families to prune, save and convert; CI covers their layer types through the others
# unless TFSPARSE_ALL_APPLICATIONS=1.
HEAVY = ("inception_resnet_v2", "nasnet")
CI_FAMILIES = tuple(
    name for name in FAMILIES if os.environ.get("TFSPARSE_ALL_APPLICATIONS") == "1" or name not in HEAVY
)


def build_application(family: str) -> keras.Model:
    """The family's model with `weights=None`, 10 classes, at its smallest input size."""
    constructor, side, extra = FAMILIES[family]
    return getattr(keras.applications, constructor)(
        weights=None, input_shape=(side, side, 3), classes=10, **extra
    )


def input_batch(model: keras.Model, batch: int = 2, seed: int = 0):
    """A random batch matching the model's input shape."""
    import numpy as np

    shape = (batch, *model.input_shape[1:])
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32")
