import pytest
from conftest import DATA
from transformers import AutoTokenizer

from bliptk.core.tokenizer import DEC_TOKEN_ID, ENC_TOKEN_ID, SEP_TOKEN_ID, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def bert():
    """The base checkpoint's own tokenizer files, read by transformers: the reference."""
    return AutoTokenizer.from_pretrained(DATA / "blip-base-tokenizer")


def test_prompts_encode_as_the_decoder_reads_them(tokenizer):
    assert tokenizer.encode("a photography of") == [30522, 1037, 5855, 1997]
    assert tokenizer("") == [30522]
    assert tokenizer.encode("the woman") == [30522, 1996, 2450]


def test_special_tokens(tokenizer):
    assert (DEC_TOKEN_ID, ENC_TOKEN_ID, SEP_TOKEN_ID) == (30522, 30523, 102)
    assert tokenizer.tokens[30522] == "[DEC]" and tokenizer.tokens[30523] == "[ENC]"
    assert tokenizer.tokens[102] == "[SEP]" and tokenizer.tokens[0] == "[PAD]"
    assert len(tokenizer) == len(tokenizer.tokens) == 30524


@pytest.mark.parametrize(
    "text",
    ["A Woman's hat, at the café!", "unaffable X-ray   spaces", "東京 2020 naïve", "the park is", ""],
)
def test_wordpieces_equal_transformers(tokenizer, bert, text):
    expected = bert(text).input_ids[1:-1]  # without [CLS] ... [SEP]
    assert tokenizer.encode(text)[1:] == expected
    assert tokenizer.decode(expected) == bert.decode(expected, skip_special_tokens=True)


def test_decode_merges_wordpieces_and_drops_specials(tokenizer):
    ids = [DEC_TOKEN_ID, 1037, 5855, 1997, 1037, 2450, SEP_TOKEN_ID]
    assert tokenizer.decode(ids) == "a photography of a woman"
    assert tokenizer.convert_ids_to_tokens([2450, 102]) == ["woman", "[SEP]"]


def test_a_foreign_vocabulary_is_refused(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    with pytest.raises(ValueError, match="30,522-entry"):
        load_tokenizer(vocab)
