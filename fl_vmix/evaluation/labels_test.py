"""Labels name what differs, once: settings most rows share are left out of rows that hold them."""

from fl_vmix.evaluation.labels import labels, unnamed_values


def test_a_model_setting_that_varies_only_among_visualmixer_rows_stays_off_the_other_methods(tiny_experiment):
    experiments = [
        tiny_experiment("privacy=none"),
        tiny_experiment(),
        tiny_experiment("model.invariant=true"),
        tiny_experiment("privacy=block_shuffle"),
        tiny_experiment("privacy=mosaic"),
    ]
    none, vm, vm_inv, block, mosaic = labels(experiments)
    assert (none, block, mosaic) == ("none", "block_shuffle", "mosaic")
    # Within VisualMixer the model differs, so both of its rows name it, majority value or not.
    assert vm == "visualmixer model.invariant=false model.invariant_region=null"
    assert vm_inv == "visualmixer model.invariant=true model.invariant_region=8"
    assert unnamed_values(experiments) == ["model.invariant=false", "model.invariant_region=null"]


def test_a_minority_value_is_named_even_when_its_method_has_one_row(tiny_experiment):
    experiments = [
        tiny_experiment("privacy=none"),
        tiny_experiment(),
        tiny_experiment("privacy=block_shuffle", "optimizer=sgd"),
    ]
    none, vm, block = labels(experiments)
    assert (none, vm) == ("none", "visualmixer")
    assert block.startswith("block_shuffle ") and "optimizer=sgd" in block.split()
    assert "optimizer=adam" in unnamed_values(experiments)


def test_without_a_majority_every_row_names_the_setting(tiny_experiment):
    experiments = [tiny_experiment("privacy=none"), tiny_experiment("optimizer=sgd")]
    none, vm = labels(experiments)
    assert "optimizer=adam" in none.split() and "optimizer=sgd" in vm.split()
    assert unnamed_values(experiments) == []


def test_parameters_are_named_where_they_differ_within_the_method(tiny_experiment):
    experiments = [
        tiny_experiment(),
        tiny_experiment("privacy.region_size=4"),
        tiny_experiment("privacy=mosaic"),
    ]
    assert labels(experiments) == ["visualmixer region_size=8", "visualmixer region_size=4", "mosaic"]
    assert unnamed_values(experiments) == []
