"""Saved Keras files by layer name (``convlstm_triton/keras/files.py``), and from_keras.

The files are written by Keras 3 itself in a temporary directory; our layers must then reproduce
the Keras model's layers on the same input."""

import io
import shutil
import zipfile

import numpy as np
import pytest
import torch
from helpers import assert_close

from convlstm_triton import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D
from convlstm_triton.keras.files import list_convlstm_layers, load_keras_layer_weights

keras = pytest.importorskip("keras", reason="Keras 3 writes the files these tests read")
h5py = pytest.importorskip("h5py", reason="reading Keras files needs h5py ([keras-files] extra)")

# Keras' numpy conversion of its torch tensors warns under numpy 2 (Keras' issue).
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
]

KERAS_TOL = 1e-5


def _np(t):
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:  # random biases too, so that a swapped/missing bias would show
            layer.set_weights([(0.3 * rng.standard_normal(w.shape)).astype(w.dtype) for w in ws])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Three Keras models saved as .keras, .weights.h5 and legacy .h5 files."""
    d = tmp_path_factory.mktemp("keras_files")
    # Functional: two ConvLSTM2D (the second without bias) and a Dense.
    inp = keras.Input((3, 5, 5, 2))
    x = keras.layers.ConvLSTM2D(3, 3, padding="same", return_sequences=True, name="enc")(inp)
    x = keras.layers.ConvLSTM2D(2, (2, 3), use_bias=False, name="dec")(x)
    out = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x))
    functional = keras.Model(inp, out)
    _randomize(functional, 0)
    # Sequential with a ConvLSTM1D.
    sequential = keras.Sequential(
        [keras.Input((4, 6, 2)), keras.layers.ConvLSTM1D(2, 3, name="c1d"),
         keras.layers.Dense(1)]
    )
    _randomize(sequential, 1)
    # A ConvLSTM3D inside a nested Sequential model.
    inner = keras.Sequential(
        [keras.Input((2, 3, 4, 4, 1)), keras.layers.ConvLSTM3D(2, 2, name="c3d")], name="inner"
    )
    nested = keras.Sequential(
        [keras.Input((2, 3, 4, 4, 1)), inner, keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    _randomize(inner, 2)
    files = {}
    for key, model in (("functional", functional), ("sequential", sequential),
                       ("nested", nested)):
        files[key, "keras"] = str(d / f"{key}.keras")
        files[key, "weights"] = str(d / f"{key}.weights.h5")
        model.save(files[key, "keras"])
        model.save_weights(files[key, "weights"])
    files["functional", "legacy"] = str(d / "functional.h5")
    functional.save(files["functional", "legacy"])
    return {"dir": d, "files": files, "functional": functional, "sequential": sequential,
            "inner": inner}


def _check_output(ours, keras_layer, x_np):
    theirs = keras_layer(x_np)
    assert_close(ours(torch.from_numpy(x_np)).detach(), torch.from_numpy(_np(theirs)),
                 torch.float32, keras_layer.name, tol=KERAS_TOL)


@pytest.mark.parametrize("fmt", ["keras", "weights", "legacy"])
def test_functional_layers_by_name(saved, fmt):
    path = saved["files"]["functional", fmt]
    model = saved["functional"]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 5, 2)).astype(np.float32)
    enc = ConvLSTM2D(3, 3, padding="same", return_sequences=True, backend="reference")
    assert enc.load_keras_weights(path, "enc") is enc  # lazy layer initialized by the load
    for ours, theirs in zip(enc.get_keras_weights(), model.get_layer("enc").get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    _check_output(enc, model.get_layer("enc"), x)

    dec = ConvLSTM2D(2, (2, 3), use_bias=False, backend="reference")
    dec.load_keras_weights(path, "dec")
    h = rng.standard_normal((2, 3, 5, 5, 3)).astype(np.float32)
    _check_output(dec, model.get_layer("dec"), h)
    assert len(load_keras_layer_weights(path, "dec")) == 2
    assert list_convlstm_layers(path) == ["enc", "dec"]


@pytest.mark.parametrize("fmt", ["keras", "weights"])
def test_sequential_and_nested(saved, fmt):
    x1 = np.random.default_rng(4).standard_normal((2, 4, 6, 2)).astype(np.float32)
    c1d = ConvLSTM1D(2, 3, backend="reference")
    c1d.load_keras_weights(saved["files"]["sequential", fmt], "c1d")
    _check_output(c1d, saved["sequential"].get_layer("c1d"), x1)

    path = saved["files"]["nested", fmt]
    x3 = np.random.default_rng(5).standard_normal((2, 2, 3, 4, 4, 1)).astype(np.float32)
    c3d = ConvLSTM3D(2, 2, in_channels=1, backend="reference")
    c3d.load_keras_weights(path, "c3d")
    _check_output(c3d, saved["inner"].get_layer("c3d"), x3)
    # The HDF5 group path (class-name based) works as well as the layer name.
    by_path = load_keras_layer_weights(path, "sequential/conv_lstm3d")
    for a, b in zip(by_path, load_keras_layer_weights(path, "c3d")):
        np.testing.assert_array_equal(a, b)


def test_layout_is_class_named_groups(saved):
    # What the loader relies on (Keras 3.15): layers/<snake class name>[_n]/cell/vars/0,1,2 and
    # the layer's name as the 'name' attribute of layers/<...>/vars.
    with h5py.File(saved["files"]["functional", "weights"], "r") as f:
        assert f["layers/conv_lstm2d/vars"].attrs["name"] == "enc"
        assert f["layers/conv_lstm2d_1/vars"].attrs["name"] == "dec"
        assert sorted(f["layers/conv_lstm2d/cell/vars"].keys()) == ["0", "1", "2"]
        assert f["layers/conv_lstm2d/cell/vars/0"].shape == (3, 3, 2, 12)
    with zipfile.ZipFile(saved["files"]["functional", "keras"]) as z:
        assert "model.weights.h5" in z.namelist()


def test_wrong_layer_names(saved):
    path = saved["files"]["functional", "keras"]
    with pytest.raises(ValueError, match=r"no layer 'nope'.*'enc'.*'dec'"):
        load_keras_layer_weights(path, "nope")
    with pytest.raises(ValueError, match=r"'head'.*not a ConvLSTM layer.*'enc'"):
        load_keras_layer_weights(path, "head")
    legacy = saved["files"]["functional", "legacy"]
    with pytest.raises(ValueError, match=r"no layer 'nope'.*'enc', 'dec'"):
        load_keras_layer_weights(legacy, "nope")
    with pytest.raises(ValueError, match="not a ConvLSTM layer"):
        load_keras_layer_weights(legacy, "head")
    # A layer of other arguments: the file's config says which (.keras, legacy .h5 models);
    # a bare weights file has no config: set_keras_weights' shape check.
    for file in (path, legacy):
        with pytest.raises(ValueError, match=r"other arguments.*use_bias: file False, layer True"):
            ConvLSTM2D(2, (2, 3)).load_keras_weights(file, "dec")
        with pytest.raises(ValueError, match=r"padding: file 'same', layer 'valid'; "
                                             r"return_sequences: file True, layer False"):
            ConvLSTM2D(3, 3, in_channels=5).load_keras_weights(file, "enc")
    weights = saved["files"]["functional", "weights"]
    with pytest.raises(ValueError, match="expected 3 weights"):
        ConvLSTM2D(2, (2, 3)).load_keras_weights(weights, "dec")
    with pytest.raises(ValueError, match="kernel must have shape"):
        ConvLSTM2D(3, 3, padding="same", return_sequences=True,
                   in_channels=5).load_keras_weights(weights, "enc")


def test_wrong_files(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such Keras file"):
        load_keras_layer_weights(tmp_path / "missing.keras", "enc")
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="neither a zip nor an HDF5"):
        load_keras_layer_weights(text, "enc")
    other_zip = tmp_path / "other.keras"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(ValueError, match="without model.weights.h5"):
        load_keras_layer_weights(other_zip, "enc")
    plain_h5 = tmp_path / "data.h5"
    with h5py.File(plain_h5, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a Keras weights file"):
        load_keras_layer_weights(plain_h5, "enc")
    with pytest.raises(ValueError, match="directory"):
        load_keras_layer_weights(tmp_path, "enc")


def _strip_names(src, dst):
    """A copy of a Keras 3.15 weights file without the layers' 'name' attributes (older Keras)."""
    if str(src) != str(dst):
        shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        def strip(_, obj):
            if isinstance(obj, h5py.Group) and "name" in obj.attrs:
                del obj.attrs["name"]
        f.visititems(strip)


def test_files_without_layer_names(saved, tmp_path):
    # .weights.h5 without names: only group paths work, and the error says so.
    old = tmp_path / "old.weights.h5"
    _strip_names(saved["files"]["functional", "weights"], old)
    with pytest.raises(ValueError, match="conv_lstm2d_1.*stores no layer names"):
        load_keras_layer_weights(old, "dec")
    dec = load_keras_layer_weights(old, "conv_lstm2d_1")
    np.testing.assert_array_equal(dec[0], saved["functional"].get_layer("dec").get_weights()[0])
    # .keras without names: config.json gives the paths (Keras' naming rule), for Functional and
    # (nested) Sequential models.
    for key, names in (("functional", ["enc", "dec"]), ("nested", ["c3d"]),
                       ("sequential", ["c1d"])):
        src = saved["files"][key, "keras"]
        dst = tmp_path / f"old_{key}.keras"
        h5 = tmp_path / f"old_{key}.h5"
        with zipfile.ZipFile(src) as z:
            h5.write_bytes(z.read("model.weights.h5"))
            members = {n: z.read(n) for n in z.namelist() if n != "model.weights.h5"}
        _strip_names(h5, h5)
        with zipfile.ZipFile(dst, "w") as z:
            for n, data in members.items():
                z.writestr(n, data)
            z.write(h5, "model.weights.h5")
        assert list_convlstm_layers(dst) == names
        with pytest.raises(ValueError, match=f"no layer 'nope'.*'{names[-1]}'"):
            load_keras_layer_weights(dst, "nope")
        for name in names:
            for a, b in zip(load_keras_layer_weights(dst, name),
                            load_keras_layer_weights(src, name)):
                np.testing.assert_array_equal(a, b)


def test_bfloat16_datasets(tmp_path):
    # Keras stores bfloat16 weights as 2-byte opaque data tagged dtype="bfloat16".
    kernel = np.array([1.5, -0.25, 3.0, 0.0] * 12, dtype=np.float32).reshape(3, 2, 8)
    rec = np.full((3, 2, 8), 0.5, dtype=np.float32)

    def to_bf16_bytes(a):
        return (a.view(np.uint32) >> 16).astype(np.uint16).view("V2")

    path = tmp_path / "bf16.weights.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("layers/conv_lstm1d/cell/vars")
        f.create_group("layers/conv_lstm1d/vars").attrs["name"] = "lstm"
        for key, arr in (("0", kernel), ("1", rec)):
            ds = g.create_dataset(key, data=to_bf16_bytes(arr))
            ds.attrs["dtype"] = "bfloat16"
    k, r = load_keras_layer_weights(path, "lstm")
    assert k.dtype == np.float32
    np.testing.assert_array_equal(k, kernel)
    np.testing.assert_array_equal(r, rec)


def test_keras_member_is_stored_uncompressed(saved):
    # The .keras member is read in place (Keras stores it uncompressed).
    with zipfile.ZipFile(saved["files"]["functional", "keras"]) as z:
        info = z.getinfo("model.weights.h5")
        assert info.compress_type == zipfile.ZIP_STORED
        data = z.read("model.weights.h5")
    with h5py.File(io.BytesIO(data), "r") as f:
        assert "layers" in f


@pytest.fixture(scope="module")
def many_arguments(tmp_path_factory):
    """A Keras model whose ConvLSTM2D sets most arguments away from their defaults."""
    d = tmp_path_factory.mktemp("keras_arguments")
    layer = keras.layers.ConvLSTM2D(
        3, (3, 2), strides=(2, 1), padding="same", activation="relu",
        recurrent_activation="hard_sigmoid", unit_forget_bias=False,
        kernel_regularizer=keras.regularizers.L2(0.01), bias_regularizer="l1",
        kernel_constraint=keras.constraints.MaxNorm(2.0, axis=[0, 1, 2]),
        dropout=0.1, recurrent_dropout=0.2, return_sequences=True, go_backwards=True,
        name="busy")
    model = keras.Sequential([keras.Input((4, 6, 5, 2)), layer])
    _randomize(model, 7)
    files = {"keras": str(d / "m.keras"), "legacy": str(d / "m.h5"),
             "weights": str(d / "m.weights.h5")}
    model.save(files["keras"])
    model.save(files["legacy"])
    model.save_weights(files["weights"])
    return model, files


@pytest.mark.parametrize("fmt", ["keras", "legacy"])
def test_from_keras_builds_the_layer_the_file_describes(many_arguments, fmt):
    model, files = many_arguments
    ours = ConvLSTM2D.from_keras(files[fmt], "busy", backend="reference")
    assert (ours.filters, ours.kernel_size, ours.strides, ours.padding) == (3, (3, 2), (2, 1),
                                                                           "same")
    assert (ours.activation, ours.recurrent_activation) == ("relu", "hard_sigmoid")
    assert not ours.unit_forget_bias and ours.go_backwards and ours.return_sequences
    assert (ours.dropout, ours.recurrent_dropout) == (0.1, 0.2)
    assert ours.kernel_regularizer.get_config() == {"l2": 0.01}
    assert ours.bias_regularizer is not None and ours.kernel_constraint is not None
    ours.eval()  # dropout off, as Keras' inference call
    x = np.random.default_rng(8).standard_normal((2, 4, 6, 5, 2)).astype(np.float32)
    _check_output(ours, model.layers[-1], x)
    # the same layer built by hand loads without complaint; one argument off is named
    ours.load_keras_weights(files[fmt], "busy")
    other = ConvLSTM2D.from_keras(files[fmt], "busy", go_backwards=False)
    with pytest.raises(ValueError, match=r"go_backwards: file True, layer False") as error:
        other.load_keras_weights(files[fmt], "busy")
    assert str(error.value).count(": file ") == 1  # nothing else differs


def test_from_keras_errors(many_arguments, saved):
    _, files = many_arguments
    with pytest.raises(ValueError, match="holds no model config.*load_keras_weights"):
        ConvLSTM2D.from_keras(files["weights"], "busy")
    with pytest.raises(ValueError, match="'busy'.*is a ConvLSTM2D, not a ConvLSTM1D"):
        ConvLSTM1D.from_keras(files["keras"], "busy")
    with pytest.raises(ValueError, match="is a Dense, not a ConvLSTM2D"):
        ConvLSTM2D.from_keras(saved["files"]["functional", "keras"], "head")
    from convlstm_triton.keras.layers import keras_config_arguments

    config = dict(model_config(many_arguments[0]), zero_output_for_mask=True)
    with pytest.raises(ValueError, match="zero_output_for_mask=True is not supported"):
        keras_config_arguments(config)
    with pytest.raises(ValueError, match=r"not supported by this library: \['new_option'\]"):
        keras_config_arguments(dict(model_config(many_arguments[0]), new_option=1))


def model_config(model):
    return model.layers[-1].get_config()


# ----------------------------------------------------------------------------- damaged files


def test_truncated_and_corrupt_files_are_named_errors(saved, tmp_path):
    """A cut .keras (or .h5), a .keras whose member header is broken: a ValueError that names
    the file and what is wrong, from every entry point (load_model included)."""
    from convlstm_triton.keras import load_model

    src = saved["files"]["functional", "keras"]
    data = open(src, "rb").read()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(data[:len(data) // 2])
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(src) as archive:
        offset = archive.getinfo("model.weights.h5").header_offset
    broken.write_bytes(data[:offset] + b"XXXX" + data[offset + 4:])  # its local header's magic
    legacy = open(saved["files"]["functional", "legacy"], "rb").read()
    cut_h5 = tmp_path / "cut.h5"
    cut_h5.write_bytes(legacy[:len(legacy) // 3])
    cases = ((cut, "truncated or corrupt .keras"), (broken, "corrupt .keras"),
             (cut_h5, "HDF5 file that cannot be read"))
    for path, message in cases:
        for call in (lambda p: load_keras_layer_weights(p, "enc"), list_convlstm_layers,
                     lambda p: ConvLSTM2D.from_keras(p, "enc"), load_model):
            with pytest.raises(ValueError, match=message) as caught:
                call(path)
            assert str(path) in str(caught.value)


def test_damaged_layer_groups_are_named_errors(saved, tmp_path):
    """A ConvLSTM whose recurrent kernel is gone from the file: every entry point says which
    layer is damaged and how (load_model raised h5py's KeyError, list_convlstm_layers left the
    layer out silently, from_keras called it 'not a ConvLSTM layer')."""
    from convlstm_triton.keras import load_model

    legacy = tmp_path / "damaged.h5"
    shutil.copy(saved["files"]["functional", "legacy"], legacy)
    with h5py.File(legacy, "r+") as f:
        group = f["model_weights"]["enc"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        del group[next(n for n in names if "recurrent" in n)]
    weights = tmp_path / "damaged.weights.h5"
    shutil.copy(saved["files"]["functional", "weights"], weights)
    with h5py.File(weights, "r+") as f:
        del f["layers/conv_lstm2d/cell/vars/1"]
    for path in (legacy, weights):
        with pytest.raises(ValueError, match="damaged"):
            list_convlstm_layers(path)
        with pytest.raises(ValueError, match="damaged"):
            load_keras_layer_weights(path, "enc" if path == legacy else "conv_lstm2d")
    with pytest.raises(ValueError, match="'enc' is damaged"):
        ConvLSTM2D.from_keras(legacy, "enc")
    with pytest.raises(ValueError, match="'enc' is damaged: its weight"):
        load_model(legacy)
    # the undamaged layer of the same file still loads
    assert len(load_keras_layer_weights(legacy, "dec")) == 2
