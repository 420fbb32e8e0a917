"""BLIP's tokenizer: BERT's uncased WordPiece vocabulary plus ``[DEC]`` and ``[ENC]``.

Built directly with the ``tokenizers`` library from a ``vocab.txt``, so it works offline from
the vocabulary that ships with bliptk. A prompt is encoded the way the captioning decoder reads
it: ``[DEC]`` (the decoder's begin-of-sequence) followed by the WordPiece ids, with no ``[CLS]``
and no ``[SEP]``; a generated ``[SEP]`` ends a caption.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _WordPieceTokenizer

from .errors import InputError

__all__ = ["Tokenizer", "load_tokenizer", "CLS_TOKEN_ID", "DEC_TOKEN_ID", "ENC_TOKEN_ID", "SEP_TOKEN_ID", "PAD_TOKEN_ID", "UNK_TOKEN_ID"]

PAD_TOKEN_ID = 0
UNK_TOKEN_ID = 100
CLS_TOKEN_ID = 101  # BERT's; BLIP's processor starts a prompt with it, generate swaps it for [DEC]
SEP_TOKEN_ID = 102
DEC_TOKEN_ID = 30522
ENC_TOKEN_ID = 30523

_BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class Tokenizer:
    """Encodes prompts for the BLIP text decoder and decodes generated ids.

    Args:
        vocab_file: A BERT ``vocab.txt`` (one WordPiece per line, id = line number).

    Attributes:
        tokens: The token list, ``tokens[i]`` is the string of id ``i`` (the page's
            ``NetExtract[tokenizer, "Tokens"]``, 0-based).
    """

    eos_token_id = SEP_TOKEN_ID  # what ends a caption (as on transformers' tokenizers)

    def __init__(self, vocab_file: str | Path):
        vocab_lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        vocab = {token: index for index, token in enumerate(vocab_lines)}
        wordpiece = _WordPieceTokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        wordpiece.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
        wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        wordpiece.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        wordpiece.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in _BERT_SPECIAL])
        added = wordpiece.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("[DEC]", "[ENC]")])
        if wordpiece.token_to_id("[DEC]") != DEC_TOKEN_ID or wordpiece.token_to_id("[ENC]") != ENC_TOKEN_ID:
            raise InputError(
                vocab_file,
                f"expected BERT's 30,522-entry vocabulary (got {len(vocab)} entries, {added} tokens added), "
                f"so that [DEC]={DEC_TOKEN_ID} and [ENC]={ENC_TOKEN_ID}",
            )
        self._wordpiece = wordpiece
        self.vocab_file = str(vocab_file)
        self.tokens: list[str] = [wordpiece.id_to_token(i) or "" for i in range(wordpiece.get_vocab_size())]

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={len(self)}, bos=[DEC]={DEC_TOKEN_ID}, eos=[SEP]={SEP_TOKEN_ID})"

    def encode(self, text: str) -> list[int]:
        """The decoder input of a prompt: ``[DEC]`` then the prompt's WordPiece ids.

        ``"a photography of"`` gives ``[30522, 1037, 5855, 1997]``; ``""`` gives ``[30522]``.
        """
        return [DEC_TOKEN_ID] + self._wordpiece.encode(text, add_special_tokens=False).ids

    __call__ = encode

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids (WordPieces joined, ``##`` continuations merged; a continuation
        with no word before it, as an unconditional caption may start, stands alone)."""
        text = self._wordpiece.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return text[2:] if text.startswith("##") else text

    def caption_text(self, prompt_ids, token_ids) -> str:
        """Text of a caption: its prompt's ids (``[DEC]`` first, or not) and its generated ones.

        The prompt's last word is complete (the prompt is text, split into whole words), so a
        caption whose first token is a WordPiece continuation starts a word of its own: prompt
        ``"a picture of"`` and tokens ``["##এ", "dog"]`` give ``"a picture of এ dog"``, where
        ``transformers``' ``decode`` of the ids together glues the piece on (``"a picture ofএ dog"``).
        The ids themselves are the same either way.
        """
        prompt, caption = [int(i) for i in prompt_ids], [int(i) for i in token_ids]
        prompt_text = self.decode(prompt).strip()
        if prompt_text and caption and self.tokens[caption[0]].startswith("##"):
            return f"{prompt_text} {self.decode(caption).strip()}".strip()
        return self.decode(prompt + caption).strip()

    def unknown_text(self, text: str) -> list[str]:
        """The characters of ``text`` that BLIP's vocabulary cannot spell: the tokenizer turns the
        word holding each into ``[UNK]`` (id 100), and the caption loses it."""
        encoding = self._wordpiece.encode(text, add_special_tokens=False)
        unknown: list[str] = []
        for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
            if token_id == UNK_TOKEN_ID:
                word = text[start:end]
                spelled = [c for c in word if self._wordpiece.encode(c, add_special_tokens=False).ids == [UNK_TOKEN_ID]]
                unknown += [c for c in spelled or [word] if c not in unknown]
        return unknown

    def convert_ids_to_tokens(self, ids) -> list[str]:
        """The WordPiece string of each id."""
        return [self.tokens[int(i)] for i in ids]


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Load BLIP's tokenizer.

    Args:
        path: A ``vocab.txt`` or a checkpoint folder holding one. None (the default) uses the
            vocabulary shipped with bliptk, which both MS-COCO captioning checkpoints use.
    """
    if path is None:
        with resources.as_file(resources.files("bliptk.assets").joinpath("vocab.txt")) as vocab:
            return Tokenizer(vocab)
    path = Path(path)
    return Tokenizer(path / "vocab.txt" if path.is_dir() else path)
