"""Labels name what sets a setting apart, and no two settings read the same."""

from fl_vmix.evaluation.labels import labels, unnamed_values


def test_a_label_names_what_sets_its_setting_apart_from_most_of_its_method(tiny_experiment):
    experiments = [
        tiny_experiment("privacy=none"),
        tiny_experiment(),
        tiny_experiment("model.invariant=true"),
        tiny_experiment("privacy.region_size=4"),
        tiny_experiment("privacy=block_shuffle"),
        tiny_experiment("privacy=mosaic"),
    ]
    assert labels(experiments) == [
        "none",
        "visualmixer",
        "visualmixer model.invariant=true model.invariant_region=8",
        "visualmixer region_size=4",
        "block_shuffle",
        "mosaic",
    ]
    assert unnamed_values(experiments) == [
        "visualmixer: region_size=8",
        "other settings: model.invariant=false model.invariant_region=null",
    ]


def test_a_setting_in_which_methods_differ_is_named_even_when_it_is_the_same_throughout_a_method(tiny_experiment):
    experiments = [
        tiny_experiment("privacy=none"),
        tiny_experiment(),
        tiny_experiment("privacy=block_shuffle", "optimizer=sgd"),
    ]
    none, vm, block = labels(experiments)
    assert (none, vm) == ("none", "visualmixer")
    assert block.startswith("block_shuffle ") and "optimizer=sgd" in block.split()
    assert unnamed_values(experiments)[-1].startswith("other settings: ")
    assert "optimizer=adam" in unnamed_values(experiments)[-1].split()


def test_without_a_majority_every_row_names_the_setting(tiny_experiment):
    experiments = [tiny_experiment("privacy=none"), tiny_experiment("optimizer=sgd")]
    none, vm = labels(experiments)
    assert "optimizer=adam" in none.split() and "optimizer=sgd" in vm.split()
    assert unnamed_values(experiments) == []
    two = [tiny_experiment("privacy.region_size=4"), tiny_experiment("privacy.region_size=16")]
    assert labels(two) == ["visualmixer region_size=4", "visualmixer region_size=16"]


def test_no_two_settings_read_the_same(tiny_experiment):
    # Every pair of these differs in one or two settings, some held by most rows, some by none.
    overrides = [
        (),
        ("privacy.region_size=4",),
        ("privacy.region_size=16",),
        ("privacy.region_size=4", "privacy.target_ratio=5.0"),
        ("privacy.target_ratio=5.0",),
        ("privacy.mode=dynamic",),
        ("model.invariant=true",),
        ("optimizer=sgd",),
        ("privacy=none",),
        ("privacy=none", "optimizer=sgd"),
    ]
    names = labels([tiny_experiment(*o) for o in overrides])
    assert len(set(names)) == len(names), names
