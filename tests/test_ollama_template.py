"""The Ollama TEMPLATE trainer writes, rendered by Go's own text/template (the engine Ollama uses, through
tests/ollama_template/main.go), lays out a multi-turn conversation exactly as the model's Jinja chat template;
templates that cannot be written that way are refused with a message."""
import pytest

from conftest import REPO, make_char_tokenizer
from trainer.data.templates import BUILT_IN
from trainer.errors import UserError
from trainer.export.ollama import check_transitions, go_template, transitions

TEMPLATES = REPO / "tests" / "ollama_template" / "templates"
SPECIALS = {  # what apply_chat_template passes as bos_token/eos_token for each family
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "HuggingFaceTB-SmolLM3-3B": ("", "<|im_end|>"),
}
CONVERSATION = [
    {"role": "system", "content": "You list ingredients."},
    {"role": "user", "content": "Title: Tea\n\nIngredients: [\"1 tea bag\", \"water\"]"},
    {"role": "assistant", "content": "[\"tea\", \"water\"]"},
    {"role": "user", "content": "And {{ coffee }} with 'quotes'?"},
    {"role": "assistant", "content": "[\"coffee\"]"},
    {"role": "user", "content": "Thanks"},
]


def renderer(template: str, bos: str = "", eos: str = "</s>"):
    tokenizer = make_char_tokenizer()
    tokenizer.bos_token, tokenizer.eos_token = bos or None, eos

    def render(messages):
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)

    return render


CASES = [(name, jinja, "", "</s>") for name, (jinja, _) in BUILT_IN.items()] + [
    (name, (TEMPLATES / f"{name}.jinja").read_text(), *SPECIALS[name]) for name in SPECIALS]


@pytest.mark.integration
@pytest.mark.parametrize("name,jinja,bos,eos", CASES, ids=[c[0] for c in CASES])
def test_go_template_renders_as_the_chat_template(name, jinja, bos, eos, go_render):
    render = renderer(jinja, bos, eos)
    found = transitions(render)
    check_transitions(found, render)
    template = go_template(found)
    system_ok = name != "google-gemma-2-2b-it"  # Gemma 2 raises on a system message; Ollama is then sent none
    for messages in (CONVERSATION if system_ok else CONVERSATION[1:], CONVERSATION[1:], CONVERSATION[:2] if system_ok else CONVERSATION[1:2]):
        assert go_render(template, messages) == render(messages), name


@pytest.mark.integration
def test_qwen_default_system_prompt_is_kept_when_there_is_none(go_render):
    render = renderer((TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(), "", "<|im_end|>")
    prompt = go_render(go_template(transitions(render)), [{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_a_template_that_moves_the_system_prompt_is_refused():
    render = renderer((TEMPLATES / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text(), "<s>", "</s>")
    with pytest.raises(UserError, match="cannot be written as an Ollama TEMPLATE exactly"):
        check_transitions(transitions(render), render)
