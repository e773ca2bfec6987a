from fl_vmix.evaluation.plot_key import _KEY_WIDTH, _key_lines


def test_the_key_numbers_every_name_once_and_wraps_long_ones_under_their_number():
    long = "visualmixer " + " ".join(f"parameter_{i}=value" for i in range(8))
    lines = _key_lines(["none", long, "mosaic cell_size=8"])
    numbered = [line for line in lines if not line.startswith("    ")]
    assert numbered[0] == " 1  none" and numbered[2] == " 3  mosaic cell_size=8"
    assert numbered[1].startswith(" 2  visualmixer ")
    continued = lines[2:-1]
    assert continued and all(line.startswith("    ") for line in continued)
    assert all(len(line) <= _KEY_WIDTH + 4 for line in lines)
    # Nothing of the long name is lost in the wrapping.
    assert " ".join(line[4:] for line in lines[1:-1]) == long
