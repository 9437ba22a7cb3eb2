"""Saved Keras models (Sequential, functional) as torch modules (``keras.load_model``),
against Keras itself on the same input: inference and training mode (BatchNormalization on
batch statistics, and its moving statistics after the step)."""

import numpy as np
import pytest
import torch
from helpers import assert_close

from convlstm_triton.keras import load_model

keras = pytest.importorskip("keras", reason="Keras 3 writes the files these tests read")
pytest.importorskip("h5py", reason="reading Keras files needs h5py")

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
]
TOL = 1e-5


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = weights
            layer.set_weights([1 + 0.2 * rng.standard_normal(gamma.shape),
                               0.2 * rng.standard_normal(beta.shape),
                               0.2 * rng.standard_normal(mean.shape),
                               0.5 + rng.random(var.shape)])
        elif weights:
            layer.set_weights([(0.3 * rng.standard_normal(w.shape)).astype(w.dtype)
                               for w in weights])


@pytest.fixture(scope="module")
def next_frame(tmp_path_factory):
    """Keras' video-prediction example, small: ConvLSTM2D + BatchNormalization twice, Conv3D."""
    d = tmp_path_factory.mktemp("keras_models")
    model = keras.Sequential([
        keras.Input((4, 6, 5, 1)),
        keras.layers.ConvLSTM2D(4, 3, padding="same", return_sequences=True, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.ConvLSTM2D(3, (1, 1), padding="same", return_sequences=True,
                                activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv3D(1, (3, 3, 3), activation="sigmoid", padding="same"),
    ])
    _randomize(model, 0)
    files = _save_both(model, d, "m")
    return model, files


def _save_both(model, directory, stem):
    """The model saved as a .keras file and a legacy .h5 model: {"keras": path, "legacy": path}."""
    files = {"keras": str(directory / f"{stem}.keras"), "legacy": str(directory / f"{stem}.h5")}
    for path in files.values():
        model.save(path)
    return files


def _x(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _keras(model, x, training):
    return torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(model(x, training=training))))


@pytest.mark.parametrize("fmt", ["keras", "legacy"])
def test_next_frame_model_matches_keras(next_frame, fmt):
    model, files = next_frame
    ours = load_model(files[fmt])
    assert list(ours.layers) == [layer.name for layer in model.layers]
    x = _x(1, (2, 4, 6, 5, 1))
    ours.eval()
    assert_close(ours(torch.from_numpy(x)).detach(), _keras(model, x, False), torch.float32,
                 "inference", tol=TOL)


def test_next_frame_model_matches_keras_in_training_mode(next_frame, tmp_path):
    model, files = next_frame
    ours = load_model(files["keras"]).train()
    twin = keras.models.load_model(files["keras"])  # Keras' own copy: its statistics move
    x = _x(2, (3, 4, 6, 5, 1))
    assert_close(ours(torch.from_numpy(x)).detach(), _keras(twin, x, True), torch.float32,
                 "training mode", tol=TOL)
    for layer in twin.layers:  # the moving statistics after the step
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, variance = layer.get_weights()[2:]
            bn = ours.layers[layer.name]
            assert_close(bn.moving_mean, torch.from_numpy(mean), torch.float32, "mean", tol=TOL)
            assert_close(bn.moving_variance, torch.from_numpy(variance), torch.float32,
                         "variance", tol=TOL)


def test_dense_head_flatten_and_activation(tmp_path):
    model = keras.Sequential([
        keras.Input((3, 5, 2)),
        keras.layers.ConvLSTM1D(3, 2, strides=2, return_sequences=False),
        keras.layers.Flatten(),
        keras.layers.Dense(4, activation="tanh"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(3),
        keras.layers.Activation("softmax"),
        keras.layers.Reshape((3, 1)),
    ])
    _randomize(model, 3)
    path = str(tmp_path / "head.keras")
    model.save(path)
    ours = load_model(path).eval()
    x = _x(4, (2, 3, 5, 2))
    assert_close(ours(torch.from_numpy(x)).detach(), _keras(model, x, False), torch.float32,
                 "dense head", tol=TOL)


@pytest.fixture(scope="module")
def encoder_forecaster(tmp_path_factory):
    """Functional: two stacked ConvLSTMs, their outputs concatenated, pooled and upsampled frame
    by frame (TimeDistributed), a skip added, BatchNormalization, a Conv3D head."""
    d = tmp_path_factory.mktemp("keras_functional")
    inp = keras.Input((3, 8, 6, 2))
    enc = keras.layers.ConvLSTM2D(4, 3, padding="same", return_sequences=True, name="enc")(inp)
    fore = keras.layers.ConvLSTM2D(4, (3, 1), padding="same", return_sequences=True,
                                   activation="relu", name="forecast")(enc)
    both = keras.layers.Concatenate(name="both")([enc, fore])
    pooled = keras.layers.TimeDistributed(keras.layers.MaxPooling2D(2), name="pool")(both)
    avg = keras.layers.TimeDistributed(
        keras.layers.AveragePooling2D(3, strides=1, padding="same"), name="avg")(pooled)
    up = keras.layers.TimeDistributed(keras.layers.UpSampling2D(2), name="up")(avg)
    skip = keras.layers.Add(name="skip")([up, both])
    normed = keras.layers.BatchNormalization(name="bn")(skip)
    out = keras.layers.Conv3D(1, 3, padding="same", name="head")(normed)
    model = keras.Model(inp, out)
    _randomize(model, 5)
    files = _save_both(model, d, "f")
    return model, files


@pytest.mark.parametrize("fmt", ["keras", "legacy"])
def test_encoder_forecaster_matches_keras(encoder_forecaster, fmt):
    model, files = encoder_forecaster
    ours = load_model(files[fmt])
    x = _x(6, (2, 3, 8, 6, 2))
    assert_close(ours.eval()(torch.from_numpy(x)).detach(), _keras(model, x, False),
                 torch.float32, "inference", tol=TOL)
    twin = keras.models.load_model(files["keras"])
    assert_close(ours.train()(torch.from_numpy(x)).detach(), _keras(twin, x, True),
                 torch.float32, "training mode", tol=TOL)


def test_what_load_model_refuses(tmp_path):
    transposed = keras.Sequential([keras.Input((2, 4, 4, 1)),
                                   keras.layers.ConvLSTM2D(2, 3, return_sequences=True),
                                   keras.layers.GlobalAveragePooling3D()])
    transposed.save(tmp_path / "transposed.keras")
    with pytest.raises(ValueError, match="Keras GlobalAveragePooling3D is not supported by "):
        load_model(tmp_path / "transposed.keras")
    inp = keras.Input((2, 4, 4, 1))
    shared = keras.layers.ConvLSTM2D(1, 3, padding="same", return_sequences=True)
    twice = keras.Model(inp, shared(shared(inp)))
    twice.save(tmp_path / "shared.keras")
    with pytest.raises(ValueError, match="called 2 times in the model: shared layers"):
        load_model(tmp_path / "shared.keras")
    transposed.save_weights(tmp_path / "transposed.weights.h5")
    with pytest.raises(ValueError, match="holds no model config.*pass config="):
        load_model(tmp_path / "transposed.weights.h5")


def test_weights_file_with_its_config(next_frame, tmp_path):
    """A .weights.h5 file and the model's config (a dict, or a JSON file of it)."""
    import json

    model, _ = next_frame
    weights = tmp_path / "m.weights.h5"
    model.save_weights(weights)
    config_file = tmp_path / "m.json"
    config_file.write_text(model.to_json())
    x = _x(11, (2, 4, 6, 5, 1))
    for config in (json.loads(model.to_json()), config_file):
        ours = load_model(weights, config=config).eval()
        assert_close(ours(torch.from_numpy(x)).detach(), _keras(model, x, False), torch.float32,
                     "weights + config", tol=TOL)


@pytest.mark.parametrize("padding, strides, output_padding", [
    ("same", 2, None), ("valid", 2, None), ("same", 3, 1), ("valid", 1, None)])
def test_conv_transpose_matches_keras(tmp_path, padding, strides, output_padding):
    model = keras.Sequential([
        keras.Input((2, 5, 4, 3)),
        keras.layers.ConvLSTM2D(3, 3, padding="same", return_sequences=True),
        keras.layers.TimeDistributed(keras.layers.Conv2DTranspose(
            2, 3, strides=strides, padding=padding, output_padding=output_padding,
            activation="relu")),
        keras.layers.Conv3DTranspose(1, (1, 2, 3), strides=(1, strides, 1), padding=padding),
    ])
    _randomize(model, 9)
    path = str(tmp_path / "t.keras")
    model.save(path)
    x = _x(10, (2, 2, 5, 4, 3))
    assert_close(load_model(path).eval()(torch.from_numpy(x)).detach(), _keras(model, x, False),
                 torch.float32, "transposed", tol=TOL)


@pytest.fixture(scope="module")
def encoder_decoder(tmp_path_factory):
    """An encoder whose states start a decoder (``initial_state=[h, c]`` from
    ``return_state=True``), a mask from a second input (``mask=``; Keras records it again on the
    decoder, which takes the masked sequence), a TimeDistributed head (given the mask, which it
    ignores), and the encoder's states among the model's outputs."""
    d = tmp_path_factory.mktemp("keras_encoder_decoder")
    frames = keras.Input((5, 6, 4, 2), name="frames")
    valid = keras.Input((5,), name="valid", dtype="bool")
    seq, h, c = keras.layers.ConvLSTM2D(3, 3, padding="same", return_sequences=True,
                                        return_state=True, name="enc")(frames, mask=valid)
    dec = keras.layers.ConvLSTM2D(3, (3, 1), padding="same", return_sequences=True,
                                  name="dec")(seq, initial_state=[h, c])
    head = keras.layers.TimeDistributed(keras.layers.Conv2D(2, 1), name="head")(dec)
    model = keras.Model([frames, valid], [head, h, c])
    _randomize(model, 12)
    files = _save_both(model, d, "ed")
    return model, files


@pytest.mark.parametrize("fmt", ["keras", "legacy"])
def test_encoder_decoder_keywords_and_state_outputs_match_keras(encoder_decoder, fmt):
    """initial_state= and mask= of saved layer calls are honoured, and each model output is the
    output index the config names (not the layer's whole tuple)."""
    model, files = encoder_decoder
    x = _x(13, (3, 5, 6, 4, 2))
    valid = np.array([[1, 1, 0, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]], bool)
    expected = [torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(t)))
                for t in model([x, valid], training=False)]
    # The test can fail: without the mask (all steps valid) Keras' outputs differ.
    unmasked = keras.ops.convert_to_numpy(model([x, np.ones_like(valid)], training=False)[0])
    assert np.abs(unmasked - expected[0].numpy()).max() > 1e-3
    ours = load_model(files[fmt]).eval()
    got = ours(torch.from_numpy(x), torch.from_numpy(valid))
    assert isinstance(got, tuple) and len(got) == 3
    for name, g, e in zip(("head", "h", "c"), got, expected):
        assert g.shape == e.shape, name
        assert_close(g.detach(), e, torch.float32, name, tol=TOL)
    # The decoder starts from the encoder's states, not from zeros.
    decoder = ours.layers["dec"]
    from_zeros = decoder(ours.layers["enc"](torch.from_numpy(x), mask=torch.from_numpy(valid))[0])
    assert (ours.layers["head"](from_zeros) - got[0]).abs().max() > 1e-3


def test_sequential_ending_in_return_state(tmp_path):
    model = keras.Sequential([keras.Input((3, 5, 4, 2)),
                              keras.layers.ConvLSTM2D(2, 3, return_state=True)])
    _randomize(model, 14)
    model.save(tmp_path / "s.keras")
    x = _x(15, (2, 3, 5, 4, 2))
    got = load_model(tmp_path / "s.keras").eval()(torch.from_numpy(x))
    expected = model(x)
    assert len(got) == len(expected) == 3
    for g, e in zip(got, expected):
        assert_close(g.detach(), torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(e))),
                     torch.float32, "sequential state", tol=TOL)


def test_keywords_load_model_cannot_honour_are_refused(tmp_path):
    """A call keyword is honoured or refused by name, never dropped."""
    inp = keras.Input((2, 4, 4, 1))
    seq = keras.layers.ConvLSTM2D(2, 3, padding="same", return_sequences=True)(inp)
    always = keras.Model(inp, keras.layers.Dropout(0.5, name="mc")(seq, training=True))
    always.save(tmp_path / "mc.keras")
    with pytest.raises(ValueError, match="'mc' is called with training=True"):
        load_model(tmp_path / "mc.keras")


def test_loaded_model_exports_with_onnx_legacy_exporter(tmp_path):
    """A loaded model's own conv and channel-wise activation layers move channels with
    non-negative axes: ONNX Runtime refuses the legacy exporter's Transpose(perm=[0, -1, ...])
    that movedim(-1, 1) becomes. The reference path, exported, against the module."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import warnings

    from convlstm_triton import set_backend

    model = keras.Sequential([
        keras.Input((3, 5, 4, 2)),
        keras.layers.ConvLSTM2D(3, 3, padding="same", return_sequences=True),
        keras.layers.Conv3D(4, 3, padding="same", activation="softmax"),
    ])
    _randomize(model, 5)
    path = str(tmp_path / "m.keras")
    model.save(path)
    ours = set_backend(load_model(path), "reference").eval()
    x = torch.from_numpy(_x(6, (2, 3, 5, 4, 2)))
    onnx_path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values
        torch.onnx.export(ours, (x,), onnx_path, dynamo=False)
    for node in onnx.load(onnx_path).graph.node:
        if node.op_type == "Transpose":
            assert min(next(a.ints for a in node.attribute if a.name == "perm")) >= 0
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = ours(x)
    assert_close(torch.from_numpy(got), want, torch.float32, "onnx", tol=TOL)
