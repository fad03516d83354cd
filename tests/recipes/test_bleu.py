import json

import pytest

from rdrop_fairseq.recipes import bleu


@pytest.mark.parametrize("line,expected", [
    ("ein Fußball-Spiel", "ein Fußball ##AT##-##AT## Spiel"),
    ("a - b", "a - b"),  # a free-standing hyphen is no compound
    ("-x x-", "-x x-"),  # nor is one at a word edge
    ("a-b-c", "a ##AT##-##AT## b-c"),  # Perl's s///g does not overlap matches
    ("a-b c-d", "a ##AT##-##AT## b c ##AT##-##AT## d"),
    ("Kosten @-@ Nutzen", "Kosten @ ##AT##-##AT## @ Nutzen"),  # Moses -a output, as compound_split_bleu.sh
    ("3-4 x", "3 ##AT##-##AT## 4 x"),
])
def test_split_compounds_matches_get_ende_bleu(line, expected):
    assert bleu.split_compounds(line) == expected


def write_generate_output(path, pairs):
    """fairseq-generate's layout, ids out of order, two beam entries per id."""
    lines = []
    for sid, (hyp, ref) in reversed(list(enumerate(pairs))):
        lines += [f"S-{sid}\tsource {sid}", f"T-{sid}\t{ref}", f"H-{sid}\t-0.5\t{hyp}",
                  f"D-{sid}\t-0.5\t{hyp}", f"P-{sid}\t-0.1 -0.2", f"H-{sid}\t-0.9\tworse {hyp}"]
    lines.append("Generate test with beam=5: BLEU4 = 1.00")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


PAIRS = [
    ("the cat sat on the mat .", "the cat sat on the mat ."),
    ("a Nutzen-Analyse is here , isn 't it ?", "the Kosten-Nutzen-Analyse is there , isn 't it ?"),
    ("we went home early", "we went home late today"),
]


def test_read_generate_output_keeps_best_hypothesis_in_id_order(tmp_path):
    gen = tmp_path / "gen.txt"
    write_generate_output(gen, PAIRS)
    hyps, refs = bleu.read_generate_output(gen)
    assert hyps == [h for h, _ in PAIRS]
    assert refs == [r for _, r in PAIRS]


def test_read_generate_output_rejects_other_files(tmp_path):
    other = tmp_path / "train.log"
    other.write_text("epoch 1 | loss 3.2\n")
    with pytest.raises(ValueError, match="no H-<id> lines"):
        bleu.read_generate_output(other)


def test_read_generate_output_rejects_sentences_without_their_pair(tmp_path):
    # a generation cut short would otherwise be scored on the sentences it reached, as if it were the test set
    gen = tmp_path / "gen.txt"
    gen.write_text("T-0\ta b\nT-1\tc d\nH-0\t-0.1\ta b\n")
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        bleu.read_generate_output(gen)
    gen.write_text("T-0\ta b\nH-0\t-0.1\ta b\nH-1\t-0.1\tc d\n")
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu.read_generate_output(gen)


def fairseq_bleu(hyps, refs):
    """fairseq's own corpus BLEU over whitespace tokens (what fairseq-score and generate report)."""
    from fairseq.data import Dictionary
    from fairseq.scoring.bleu import BleuConfig, Scorer

    vocab = Dictionary()
    scorer = Scorer(BleuConfig(pad=vocab.pad(), eos=vocab.eos(), unk=vocab.unk()))
    for hyp, ref in zip(hyps, refs):
        scorer.add(vocab.encode_line(ref, add_if_not_exist=True), vocab.encode_line(hyp, add_if_not_exist=True))
    return scorer.score()


def test_tokenized_bleu_equals_fairseq_bleu():
    hyps, refs = [h for h, _ in PAIRS], [r for _, r in PAIRS]
    ours = bleu.tokenized_bleu(hyps, refs).score
    assert 0 < ours < 100
    assert ours == pytest.approx(fairseq_bleu(hyps, refs), abs=0.01)


def test_compound_split_scores_compounds_by_their_parts():
    # Without splitting, "Nutzen-Analyse" and "Kosten-Nutzen-Analyse" share no token.
    hyps, refs = ["die Nutzen-Analyse"], ["die Kosten-Nutzen-Analyse"]
    plain = bleu.tokenized_bleu(hyps, refs)
    split = bleu.tokenized_bleu(hyps, refs, compound_split=True)
    assert split.counts[0] > plain.counts[0]
    assert split.score == pytest.approx(fairseq_bleu([bleu.split_compounds(h) for h in hyps],
                                                     [bleu.split_compounds(r) for r in refs]), abs=0.01)


def test_compound_split_score_comes_with_the_unsplit_one(tmp_path, capsys):
    gen = tmp_path / "gen.txt"
    write_generate_output(gen, [("the so-called cat sat", "the so-called dog sat")])
    assert "tokenized_bleu_unsplit" not in bleu.score_generate_output(gen, "en")
    result = bleu.score_generate_output(gen, "en", compound_split=True)
    assert result["tokenized_bleu_unsplit"] == bleu.score_generate_output(gen, "en")["tokenized_bleu"]
    assert result["tokenized_bleu_unsplit"] != result["tokenized_bleu"]
    assert bleu.main([str(gen), "--lang", "en", "--compound-split"]) == 0
    assert f"without the compound split = {result['tokenized_bleu_unsplit']:.2f}" in capsys.readouterr().out


def test_lowercase_ignores_case_only_when_asked():
    assert bleu.tokenized_bleu(["The Cat sat on the mat ."], ["the cat sat on the mat ."], lowercase=True).score == pytest.approx(100)
    assert bleu.tokenized_bleu(["The Cat sat on the mat ."], ["the cat sat on the mat ."]).score < 100


def test_cli_prints_signature_and_writes_json(tmp_path, capsys):
    gen, out = tmp_path / "gen.txt", tmp_path / "bleu.json"
    write_generate_output(gen, PAIRS)
    assert bleu.main([str(gen), "--lang", "en", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["sentences"] == 3
    assert result["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|")
    assert result["sacrebleu_signature"] in printed
    # Detokenising joins "isn 't" and the punctuation, so the two BLEUs differ.
    assert result["sacrebleu"] != result["tokenized_bleu"]
    assert f"{result['tokenized_bleu']:.2f}" in printed
    assert not list(tmp_path.glob("*.part"))


RAW_PAIRS = [
    ("Die Kosten-Nutzen-Analyse kam nach Haus.", "Die Kosten-Nutzen-Analyse kam nach Hause."),
    ("Ist das gut, oder nicht?", "Ist das gut, oder?"),
    ("Er sagte: \"Ja & nein.\"", "Er sagte: \"Ja & nein.\""),
]


def test_raw_text_is_moses_tokenised_for_the_tokenised_bleu(tmp_path):
    # sentencepiece data leaves fairseq-generate's output untokenised: without tokenising it, "Haus." and
    # "Hause." would be single tokens and the compound split would apply to raw words.
    raw, tokenised = tmp_path / "raw.txt", tmp_path / "tok.txt"
    write_generate_output(raw, RAW_PAIRS)
    tokenize = bleu.moses_tokenize
    write_generate_output(tokenised, [(tokenize([h], "de")[0], tokenize([r], "de")[0]) for h, r in RAW_PAIRS])
    from_raw = bleu.score_generate_output(raw, "de", compound_split=True, raw_text=True)
    from_tokens = bleu.score_generate_output(tokenised, "de", compound_split=True)
    assert from_raw["tokenized_bleu"] == from_tokens["tokenized_bleu"]
    assert from_raw["tokenized_bleu"] != bleu.score_generate_output(raw, "de", compound_split=True)["tokenized_bleu"]
    assert "&amp;" in tokenize([RAW_PAIRS[2][0]], "de")[0]  # escaped, as tokenizer.perl does
    # sacreBLEU takes the raw text as it is
    import sacrebleu

    hyps, refs = zip(*RAW_PAIRS)
    assert from_raw["sacrebleu"] == round(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score, 2)
    assert from_raw["raw_text"] and not from_tokens["raw_text"]


def test_lowercased_text_is_scored_and_signed_case_insensitive(tmp_path):
    gen = tmp_path / "gen.txt"
    write_generate_output(gen, PAIRS)
    result = bleu.score_generate_output(gen, "en", lowercase=True)
    assert result["sacrebleu_signature"].startswith("nrefs:1|case:lc|")
    # every BLEU of an IWSLT14 run ignores case, the compound-split one and the unsplit one too
    write_generate_output(gen, [("The So-Called Cat sat .", "the so-called cat sat .")])
    result = bleu.score_generate_output(gen, "en", compound_split=True, lowercase=True)
    assert result["tokenized_bleu"] == result["tokenized_bleu_unsplit"] == result["sacrebleu"] == 100


def test_german_output_is_scored_with_german_moses_rules(tmp_path):
    # get_ende_bleu.sh runs tokenizer.perl -l de, which keeps an ordinal's period ("3."), and German
    # detokenizer.perl leaves "'s" apart; English rules would split the one and join the other
    import sacrebleu

    gen = tmp_path / "gen.txt"
    write_generate_output(gen, [("Am 3. Oktober kam er.", "Am 3. Oktober kam er.")])
    assert "hyp_len = 6 ref_len = 6" in bleu.score_generate_output(gen, "de", raw_text=True)["tokenized_bleu_detail"]
    write_generate_output(gen, [("so geht 's nicht weiter , sagte er .", "so geht 's heute nicht weiter , sagte er .")])
    detokenised = ["so geht 's nicht weiter, sagte er."], ["so geht 's heute nicht weiter, sagte er."]
    expected = sacrebleu.corpus_bleu(detokenised[0], [detokenised[1]]).score
    assert bleu.score_generate_output(gen, "de")["sacrebleu"] == round(expected, 2)
