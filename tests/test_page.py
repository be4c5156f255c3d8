"""The page shell's own handlers (no server): the header's model status and the ranges that follow
the visitor's model."""

from __future__ import annotations

from demo.runtime.catalog import ModelSpec
from demo.runtime.pool import ModelManager
from demo.ui.page import UNAVAILABLE, ModelHandlers, format_model_status, max_new_tokens_limit, model_choices


def test_max_new_tokens_leaves_the_prompt_room_in_the_context_window():
    assert max_new_tokens_limit(512) == 511  # the bundled model: 512 would leave no room for the prompt
    assert max_new_tokens_limit(1024) == 512  # the slider's own top
    assert max_new_tokens_limit(128) == 127
    assert max_new_tokens_limit(1) == 1


def test_the_length_slider_follows_the_visitors_model(tiny_spec, tiny_loaded):
    manager = ModelManager([tiny_spec], device="cpu")
    manager.add(tiny_loaded)  # a 128-token context window
    update = ModelHandlers(manager).length_limit(400)
    assert update.maximum == 127 and update.value == 127
    # a value that fits is left to the page (a link may have set a newer one meanwhile)
    update = ModelHandlers(manager).length_limit(30)
    assert update.constructor_args == {"maximum": 127}


def test_the_status_names_the_model_and_does_not_blame_other_visitors(tiny_spec, tiny_loaded, tiny_loaded_int8):
    manager = ModelManager([tiny_spec], device="cpu")
    manager.add(tiny_loaded_int8)
    manager.add(tiny_loaded)
    status = format_model_status(manager)
    assert "**tiny**" in status and "context 128 tokens" in status
    assert "or the other precision of a comparison" in status


def test_the_model_menu_marks_what_a_visitor_cannot_load(tiny_spec, tiny_loaded):
    hub = ModelSpec("gpt2", "openai-community/gpt2", "a Hub model")
    manager = ModelManager([tiny_spec, hub], device="cpu", visitor_models="local")
    manager.add(tiny_loaded)
    assert model_choices(manager) == [("tiny", "tiny"), (f"gpt2 ({UNAVAILABLE})", "gpt2")]
    menu, precision = ModelHandlers(manager).menu()
    assert menu.value == "tiny" and precision == "fp32"
    everyone = ModelManager([tiny_spec, hub], device="cpu", visitor_models="all")
    assert [label for label, _ in model_choices(everyone)] == ["tiny", "gpt2"]
