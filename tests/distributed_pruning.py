"""Distributed pruning runs, each in its own process(es); each prints one JSON line of facts.

    python distributed_pruning.py
        tf.distribute.MirroredStrategy on two logical CPUs of one process.
    python distributed_pruning.py jax-worker --process-id 0 --port 12345 --workdir DIR [--die-at-step N]
        one of two JAX processes on 127.0.0.1 (keras.distribution, DataParallel, gloo CPU
        collectives), pruning during fit() with BackupAndRestore; started by tests/test_distributed.py.
    torchrun --nproc_per_node 2 distributed_pruning.py torch-ddp
        two PyTorch processes with DistributedDataParallel (gloo) in a custom training loop: Keras'
        fit() does not distribute on the torch backend, so the loop calls UpdatePruningStep's hooks.

Logical devices and the Keras backend must be configured before TensorFlow or JAX starts, hence the
separate processes.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One global batch of the JAX run is the same 32 examples as one batch of a single-process run;
# each process feeds its half.
GLOBAL_BATCH = 32
STEPS_PER_EPOCH = 4
EPOCHS = 4
# Masks change every 2 steps from step 0 up to step 10; the last epochs train at the target.
SCHEDULE = {"initial_sparsity": 0.0, "final_sparsity": 0.75, "begin_step": 0, "end_step": 10, "frequency": 2}


def _data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS_PER_EPOCH, 16)).astype("float32")
    y = x[:, :4].argmax(axis=1).astype("int32")
    return x, y


def mirrored():
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np

    import tfsparse
    from tfsparse.mask_updates import collect_wrappers

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = x[:, :4].argmax(axis=1).astype("int32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)]
        )
        pruned = tfsparse.prune_low_magnitude(
            model, pruning_schedule=tfsparse.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=12, frequency=3)
        )
        pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[tfsparse.UpdatePruningStep()])
    facts = {"replicas": strategy.num_replicas_in_sync, "layers": []}
    for wrapper in collect_wrappers(pruned):
        per_replica_masks = [v.numpy() for v in wrapper.masks[0].value.values]
        per_replica_kernels = [v.numpy() for v in wrapper.pruned_weights[0].value.values]
        facts["layers"].append(
            {
                "step": wrapper.get_pruning_step(),
                "sparsity": [float((m == 0).mean()) for m in per_replica_masks],
                "masks_identical": all(np.array_equal(per_replica_masks[0], m) for m in per_replica_masks),
                "kernels_identical": all(
                    np.array_equal(per_replica_kernels[0], k) for k in per_replica_kernels
                ),
                "kernel_zeros_follow_mask": bool(
                    (per_replica_kernels[0][per_replica_masks[0] == 0] == 0).all()
                ),
            }
        )
    print(json.dumps(facts))


def jax_worker(process_id: int, port: int, workdir: str, die_at_step: int | None):
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    # Cross-process collectives on CPU go through gloo (the default CPU client has none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")

    import keras

    keras.distribution.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    import numpy as np

    import tfsparse
    from tfsparse.mask_updates import collect_wrappers

    keras.utils.set_random_seed(0)
    devices = keras.distribution.list_devices()
    # The data is already split per process below, so Keras must not shard it again.
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    )

    x, y = _data()
    # Process p feeds rows p*16..p*16+15 of every global batch: the global batch is unchanged.
    local = GLOBAL_BATCH // 2
    rows = (np.arange(len(x)).reshape(-1, 2, local)[:, process_id]).ravel()
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)]
    )
    pruned = tfsparse.prune_low_magnitude(model, pruning_schedule=tfsparse.PolynomialDecay(**SCHEDULE))
    pruned.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    # Every process keeps its own backup (all hold the same replicated state); the backup restores
    # weights, masks, pruning steps and the optimizer, and must run before UpdatePruningStep reads
    # the restored step in on_train_begin.
    backup = keras.callbacks.BackupAndRestore(
        os.path.join(workdir, f"backup_{process_id}"), delete_checkpoint=False, double_checkpoint=True
    )
    log_path = os.path.join(workdir, f"steps_{process_id}.jsonl")

    class RecordSteps(keras.callbacks.Callback):
        """Logs the pruning step each epoch ends at (after the backup is written), and dies on cue."""

        def on_train_begin(self, logs=None):
            self._batches = 0
            self._start = collect_wrappers(self.model)[0].get_pruning_step()
            with open(log_path, "a") as log:
                log.write(json.dumps({"event": "start", "step": self._start}) + "\n")

        def on_train_batch_begin(self, batch, logs=None):
            if die_at_step is not None and self._start + self._batches == die_at_step:
                os.kill(os.getpid(), 9)  # SIGKILL: no cleanup, like a lost machine
            self._batches += 1

        def on_epoch_end(self, epoch, logs=None):
            steps = [w.get_pruning_step() for w in collect_wrappers(self.model)]
            with open(log_path, "a") as log:
                log.write(json.dumps({"event": "epoch_end", "epoch": epoch, "steps": steps}) + "\n")

    pruned.fit(
        x[rows],
        y[rows],
        batch_size=local,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[backup, tfsparse.UpdatePruningStep(), RecordSteps()],
    )
    facts = {"process_id": jax.process_index(), "devices": len(devices), "layers": []}
    for wrapper in collect_wrappers(pruned):
        (mask,) = wrapper.get_masks()
        (kernel,) = wrapper.get_pruned_weight_values()
        facts["layers"].append(
            {
                "step": wrapper.get_pruning_step(),
                "mask": mask.astype(int).ravel().tolist(),
                "kernel": kernel.ravel().tolist(),
            }
        )
    print(json.dumps(facts), flush=True)
    # Nobody leaves before everybody has read the final state (shutting down the coordinator early
    # would fail the other process).
    jax.distributed.shutdown()


def torch_ddp_worker():
    os.environ["KERAS_BACKEND"] = "torch"
    import keras
    import torch
    import torch.distributed as dist

    import tfsparse
    from tfsparse.mask_updates import collect_wrappers

    dist.init_process_group("gloo")  # rank, world size and address come from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    keras.utils.set_random_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    x, y = _data()
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)]
    )
    pruned = tfsparse.prune_low_magnitude(model, pruning_schedule=tfsparse.PolynomialDecay(**SCHEDULE))
    parallel = torch.nn.parallel.DistributedDataParallel(pruned)
    optimizer = torch.optim.SGD(parallel.parameters(), lr=0.1)
    loss = torch.nn.CrossEntropyLoss()
    step_callback = tfsparse.UpdatePruningStep()
    step_callback.set_model(pruned)
    step_callback.on_train_begin()
    for epoch in range(EPOCHS):
        for batch in range(STEPS_PER_EPOCH):
            rows = slice(batch * GLOBAL_BATCH + rank, (batch + 1) * GLOBAL_BATCH, world)
            step_callback.on_train_batch_begin(batch)
            optimizer.zero_grad()
            loss(
                parallel(torch.from_numpy(x[rows]), training=True), torch.from_numpy(y[rows]).long()
            ).backward()
            optimizer.step()
        step_callback.on_epoch_end(epoch)
    step_callback.on_train_end()
    facts = {"process_id": rank, "layers": []}
    for wrapper in collect_wrappers(pruned):
        (mask,) = wrapper.get_masks()
        (kernel,) = wrapper.get_pruned_weight_values()
        facts["layers"].append(
            {
                "step": wrapper.get_pruning_step(),
                "mask": mask.astype(int).ravel().tolist(),
                "kernel": kernel.ravel().tolist(),
            }
        )
    print(json.dumps(facts), flush=True)
    dist.destroy_process_group()


def main():
    if len(sys.argv) == 1:
        mirrored()
        return
    if sys.argv[1:] == ["torch-ddp"]:
        torch_ddp_worker()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["jax-worker"])
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--die-at-step", type=int, default=None)
    args = parser.parse_args()
    jax_worker(args.process_id, args.port, args.workdir, args.die_at_step)


if __name__ == "__main__":
    main()
