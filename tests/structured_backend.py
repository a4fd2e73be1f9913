"""Structured pruning on the Keras backend named by KERAS_BACKEND; prints one JSON line of facts.

Run in its own process, since the backend is fixed at import.
"""

import json

import keras
import numpy as np

from tfsparse import structured

L = keras.layers


def _model():
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 3, padding="same", name="a")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(L.Add()([x, L.Conv2D(8, 1, name="b")(inputs)]))
    gate = L.Conv2D(8, 1, activation="sigmoid", name="gate")(L.GlobalAveragePooling2D(keepdims=True)(x))
    x = L.Multiply()([x, gate])
    x = L.Reshape((36, 8))(x)
    x = L.Add()([x, L.MultiHeadAttention(2, 4, name="mha")(x, x)])
    return keras.Model(inputs, L.Dense(3)(L.Dense(12, activation="relu", name="ff")(L.Flatten()(x))))


def main():
    keras.utils.set_random_seed(0)
    model = _model()
    bn = model.get_layer("bn")
    gamma, beta, mean, variance = bn.get_weights()
    gamma[:4], beta[:4] = 0, 0
    bn.set_weights([gamma, beta, mean, variance])
    for name in ("b", "gate"):  # the residual branch and the gate: channels 0-3 carry nothing
        kernel, bias = model.get_layer(name).get_weights()
        kernel[..., :4], bias[:4] = 0, 0
        model.get_layer(name).set_weights([kernel, bias])
    output = model.get_layer("mha").output_dense  # attention adds into the same channels
    kernel, bias = (np.array(v) for v in (output.kernel, output.bias))
    kernel[..., :4], bias[:4] = 0, 0
    output.kernel.assign(kernel)
    output.bias.assign(bias)
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    small = structured.prune(model, ratio=0.5, importance="bn_scale")
    model.compile(loss="mse")
    graph = structured.DependencyGraph(model)
    taylor = structured.group_scores(model, graph, "taylor", data=(x, y))
    print(
        json.dumps(
            {
                "backend": keras.backend.backend(),
                "filters": small.get_layer("a").filters,
                "difference": float(np.abs(np.asarray(small(x)) - np.asarray(model(x))).max()),
                "same_at_zero": bool(
                    (np.asarray(structured.prune(model, 0.0)(x)) == np.asarray(model(x))).all()
                ),
                "heads": structured.prune(model, 0.5).get_layer("mha").num_heads,
                "taylor_groups": len(taylor),
                "taylor_finite": bool(all(np.isfinite(v).all() for v in taylor.values())),
            }
        )
    )


if __name__ == "__main__":
    main()
