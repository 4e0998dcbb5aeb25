"""metrics.py: hand-computed BLEU / NIST / ROUGE-L cases, mteval's tokenisation, the PTB approximation,
and golden values from the official e2e-metrics scripts."""

import math
import os

import pytest

import metrics
from sources.files import read_e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mteval_tokenisation():
    # the same token lists as e2e-metrics' metrics/pymteval.py NGramScore.tokenize gives for these
    assert metrics.mteval_tokenize("£20-25, it's family-friendly.") == [
        '£20', '-', '25', ',', "it's", 'family-friendly', '.',
    ]  # fmt: skip
    assert metrics.mteval_tokenize('The Eagle (a pub) serves 3.5 stars & "fine" food; near X/Y.') == [
        'The', 'Eagle', '(', 'a', 'pub', ')', 'serves', '3.5', 'stars', '&', '"', 'fine', '"',
        'food', ';', 'near', 'X', '/', 'Y', '.',
    ]  # fmt: skip
    assert metrics.mteval_tokenize('City centre.It is 1,000 km') == [
        'City', 'centre', '.', 'It', 'is', '1,000', 'km',
    ]  # fmt: skip
    assert metrics.mteval_tokenize('') == ['']  # an empty segment is one empty token


def test_bleu_by_hand():
    # one reference, every n-gram matched, hypothesis shorter: BLEU = brevity penalty exp(1 - 6/5)
    assert metrics.bleu(['the cat sat on the'], [['the cat sat on the mat']]) == pytest.approx(
        math.exp(-0.2), abs=1e-12
    )
    # several references: the closest in length (6, not 8) sets the penalty
    two = [['the cat sat on the mat', 'a cat sat on a mat , too']]
    assert metrics.bleu(['the cat sat on the'], two) == pytest.approx(math.exp(-0.2), abs=1e-12)
    # a tie in distance (3 and 5 around 4) takes the shorter reference: no penalty then
    assert metrics.bleu(['a b c d'], [['a b c', 'a b c d e']], max_n=1) == pytest.approx(1.0)
    # clipping: 'the' counts at most as often as in the one reference holding it most (2 of 4)
    clip = [['the cat', 'the the dog']]
    assert metrics.bleu(['the the the the'], clip, max_n=1) == pytest.approx(0.5)
    # case and punctuation: 'The Cat.' is 'the cat .' (3 tokens); no 4-gram, so its precision is
    # mteval's floor 1e-15 / 1e-9 and BLEU = (1e-6) ** (1/4), as the official port gives (0.0316)
    assert metrics.bleu(['The Cat.'], [['the cat .']]) == pytest.approx(1e-6**0.25, rel=1e-9)
    assert metrics.bleu(['THE CAT SAT DOWN .'], [['the cat sat down.']]) == pytest.approx(1.0)
    # the empty hypothesis: one empty token, nothing matches; the penalty exp(1 - 2/1)
    empty = math.exp(-1) * math.exp((math.log(1e-15) + 3 * math.log(1e-6)) / 4)
    assert metrics.bleu([''], [['a b']]) == pytest.approx(empty, rel=1e-9)  # official: 2.0687e-09
    # corpus level: counts are summed before the ratio, not per-sentence BLEUs averaged
    hyps, refs = ['a b c d', 'x y z w'], [['a b c d'], ['x y q w']]
    p = [(4 + 3) / 8, (3 + 1) / 6, (2 + 0) / 4, (1 + 0) / 2]  # x y . w matches 3, x y 1
    assert metrics.bleu(hyps, refs) == pytest.approx(math.prod(p) ** 0.25, rel=1e-12)


def test_nist_by_hand():
    # info(w) = log2(all reference words / count(w)); a bigram after a word that always precedes it
    # carries no information: log2(count(a) / count(a b)) = 0
    assert metrics.nist(['a b c d e'], [['a b c d e']]) == pytest.approx(math.log2(5), rel=1e-12)
    # a hypothesis at 2/3 of the reference length gets NIST's length penalty of exactly 0.5
    got = metrics.nist(['a b c d'], [['a b c d e f']])
    assert got == pytest.approx(0.5 * math.log2(6), rel=1e-12)
    # matches are clipped by the reference, as in BLEU; a word in every reference still informs
    got = metrics.nist(['a a b'], [['a b c']])
    assert got == pytest.approx((2 * math.log2(3)) / 3, rel=1e-12)


def test_rouge_l_by_hand():
    # LCS('a b c d', 'a c d e f') = 3: P = 3/4, R = 3/5, F_beta with beta = 1.2
    P, R, b2 = 3 / 4, 3 / 5, 1.2**2
    f = (1 + b2) * P * R / (R + b2 * P)
    assert metrics.rouge_l(['a b c d'], [['a c d e f']]) == pytest.approx(f, rel=1e-12)
    # best precision and best recall come from any reference each (pycocoevalcap's rule)
    assert metrics.rouge_l(['x y'], [['x y z w', 'x y']]) == pytest.approx(1.0)
    assert metrics.rouge_l(['Nothing.'], [['a b']]) == 0.0
    assert metrics.rouge_l([''], [['a b']]) == 0.0
    assert metrics.lcs_length(list('abcbdab'), list('bdcaba')) == 4


def test_ptb_approximation():
    t = metrics.ptb_tokenize
    assert (
        t("It's in the City Centre, near the Café (cheap).")
        == "it 's in the city centre near the café cheap"
    )
    assert t('Prices £20-£25; it isn\'t kid-friendly!') == "prices # 20 # 25 it is n't kid-friendly"
    assert t('A 3.5 star pub.') == 'a 3.5 star pub'


def test_cider_d_properties():
    refs = [['a cat sits on the mat', 'the cat is on the mat'], ['a dog runs in the park']]
    # a hypothesis whose n-grams are in every item's references weighs nothing (idf 0) ...
    assert metrics.cider_d(['the', 'the'], [['the'], ['the']]) == 0.0
    # ... and copying one reference scores higher than another item's sentence
    good = metrics.cider_d(['a cat sits on the mat', 'a dog runs in the park'], refs)
    bad = metrics.cider_d(['a dog runs in the park', 'a cat sits on the mat'], refs)
    assert good > 5 * bad and good > 1


def golden_case():
    """The first 30 test-set MRs with at least 2 references: each MR's first reference is the
    prediction, its other references the references. Golden values: the official scripts
    (github.com/tuetschek/e2e-metrics at its current master, measure_scores.py's load_data, then
    run_pymteval and run_coco_eval with pycocoevalcap's Stanford PTB tokenizer jar, Java 17), run in a
    scratch venv outside this repository on these two files written with metrics.write_*."""
    by_mr = {}
    for q, a in read_e2e(os.path.join(ROOT, 'data', 'e2e', 'testset_w_refs.csv')):
        by_mr.setdefault(q, []).append(a)
    groups = [refs for refs in by_mr.values() if len(refs) >= 2][:30]
    return [g[0] for g in groups], [g[1:] for g in groups]


def test_golden_values_of_the_official_scripts(tmp_path):
    preds, refs = golden_case()
    metrics.write_predictions(tmp_path / 'p.txt', preds)
    metrics.write_references(tmp_path / 'r.txt', refs)
    got = metrics.score_files(tmp_path / 'r.txt', tmp_path / 'p.txt')
    official = {  # measure_scores.py also gives METEOR 0.4769 here (not computed by this project)
        'BLEU': 0.6474639821845894,
        'NIST': 7.630409064854449,
        'ROUGE_L': 0.7134549993475235,
        'CIDEr': 2.216511214917256,
    }
    for k, v in official.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    # the official example (example-inputs/ of e2e-metrics: 10 devset MRs, the TGen baseline) gives
    # BLEU 0.7202928, NIST 7.7888876, ROUGE_L 0.7909526, CIDEr 2.3039431 with both (docs/e2e.md)


def test_reference_file_format(tmp_path):
    p = tmp_path / 'refs.txt'
    p.write_text('a\nb\n\nc\n\n')
    assert metrics.read_references(p) == [['a', 'b'], ['c']]
    p.write_text('a\nb\nc\n')  # no blank line: one reference per item
    assert metrics.read_references(p) == [['a'], ['b'], ['c']]
    metrics.write_references(p, [['x', 'y'], ['z']])
    assert p.read_text() == 'x\ny\n\nz\n' and metrics.read_references(p) == [['x', 'y'], ['z']]
    (tmp_path / 'preds.txt').write_text('x\n')
    with pytest.raises(ValueError, match='has 1 predictions but .* has 2 groups'):
        metrics.score_files(p, tmp_path / 'preds.txt')
    with pytest.raises(ValueError, match='item 1 has no reference'):
        metrics.bleu(['x'], [[]])
