"""
The E2E NLG metrics, written for this project: BLEU-4, NIST-5, ROUGE-L and CIDEr-D over a corpus of
predictions, each scored against all the references of its meaning representation.

    python sample.py --score REFS PREDS     # two files in e2e-metrics' plain-text formats

What each one reproduces (checked against the official scripts, docs/e2e.md):
- BLEU and NIST: mteval-v13a as the Python port in tuetschek/e2e-metrics (metrics/pymteval.py)
  computes them: its own tokenisation of the raw text, case-insensitive n-grams, corpus-level counts,
  BLEU's brevity penalty from the reference closest in length to each hypothesis, NIST's
  information weights from the reference n-gram counts of the whole corpus. BLEU on the 0-1 scale.
  The same numbers to 1e-4 (to ~1e-12 in fact) on the official example and on this project's runs.
- ROUGE-L (beta 1.2, best precision and best recall over the references) and CIDEr-D (n-grams 1-4,
  tf-idf over the corpus's references, clipped, with a Gaussian length penalty, sigma 6, x10) as
  the COCO caption scorers (pycocoevalcap) compute them. Those run after the Stanford PTB tokenizer
  (Java), lower-cased, punctuation tokens dropped; ptb_tokenize below approximates it in a few rules,
  so ROUGE-L and CIDEr can differ from the official ones in the third decimal (docs/e2e.md: measured).
- METEOR is left out: it needs Java and the METEOR 1.5 paraphrase tables.
"""

import math
import re
from collections import Counter

# -----------------------------------------------------------------------------------------------
# BLEU and NIST (mteval-v13a)

# mteval's "western" tokenisation splits off these ASCII symbols wherever they stand; '.' and ','
# are split off unless they sit between digits (3.5, 1,000); '-' only after a digit (20-25 -> 20 - 25).
# Apostrophes and hyphens inside words stay (family-friendly, It's are one token each).
_SYMBOLS = re.escape('!"#$%&()*+/:;<=>?@[\\]^_`{|}~')
_ENTITIES = (('&quot;', '"'), ('&amp;', '&'), ('&lt;', '<'), ('&gt;', '>'))


def mteval_tokenize(text):
    """mteval-v13a's tokens of one segment. An empty segment is one empty token, as in mteval (it
    then counts as a hypothesis of length 1 with no matches)."""
    text = text.replace('<skipped>', '').replace('-\n', '').replace('\n', ' ')
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    text = f' {text} '
    text = re.sub(f'([{_SYMBOLS}])', r' \1 ', text)
    text = re.sub(r'([^0-9])([.,])', r'\1 \2 ', text)  # a period or comma not after a digit
    text = re.sub(r'([.,])([^0-9])', r' \1 \2', text)  # ... or not before one
    text = re.sub(r'([0-9])(-)', r'\1 \2 ', text)
    return re.sub(r'\s+', ' ', text).strip().split(' ')


def ngrams(tokens, n):
    """Counter of the n-grams (tuples) of a token list."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def clipped_ref_counts(refs, n):
    """For each n-gram, the most times any single reference holds it (BLEU's clipping count)."""
    best = Counter()
    for ref in refs:
        for g, c in ngrams(ref, n).items():
            best[g] = max(best[g], c)
    return best


def _lower(segment):
    return [t.lower() for t in segment]


def bleu(hyps, refs, max_n=4):
    """Corpus BLEU-4 of hypotheses (strings) against lists of references (strings), 0-1.
    Matching is case-insensitive; lengths count mteval tokens."""
    _check(hyps, refs)
    hits, totals, ref_len, hyp_len = [0] * max_n, [0] * max_n, 0, 0
    for hyp, rs in zip(hyps, refs):
        h = _lower(mteval_tokenize(hyp))
        rs = [_lower(mteval_tokenize(r)) for r in rs]
        for n in range(1, max_n + 1):
            counts, best = ngrams(h, n), clipped_ref_counts(rs, n)
            hits[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            totals[n - 1] += len(h) - n + 1  # mteval adds this even when it is negative
        hyp_len += len(h)
        # the reference closest in length; on a tie, the shorter one
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
    # the brevity penalty punishes a corpus shorter than its closest references
    bp = math.exp(1 - ref_len / (hyp_len or 1e-5)) if hyp_len <= ref_len else 1.0
    # geometric mean of the n-gram precisions; a zero is floored so that BLEU stays defined
    log_p = sum(math.log(max(k, 1e-15) / max(t, 1e-9)) for k, t in zip(hits, totals))
    return bp * math.exp(log_p / max_n)


# NIST's length penalty: a system output at 2/3 of the reference length scores half (mteval's beta)
NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


def nist(hyps, refs, max_n=5):
    """Corpus NIST-5: matched n-grams weighted by their information in the references of the whole
    corpus, info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)), times a length penalty against the
    average reference length."""
    _check(hyps, refs)
    ref_counts = [Counter() for _ in range(max_n + 1)]  # [0] holds the () "0-gram": all ref words
    matched = [[] for _ in range(max_n)]  # per n: one Counter of matched n-grams per segment
    totals, hyp_len, avg_ref_len = [0] * max_n, 0, 0.0
    for hyp, rs in zip(hyps, refs):
        h = _lower(mteval_tokenize(hyp))
        rs = [_lower(mteval_tokenize(r)) for r in rs]
        for n in range(1, max_n + 1):
            counts, best = ngrams(h, n), clipped_ref_counts(rs, n)
            matched[n - 1].append(Counter({g: min(c, best[g]) for g, c in counts.items()}))
            totals[n - 1] += len(h) - n + 1
            for r in rs:
                ref_counts[n].update(ngrams(r, n))
        ref_counts[0][()] += sum(len(r) for r in rs)
        hyp_len += len(h)
        avg_ref_len += sum(len(r) for r in rs) / len(rs)

    def info(g):
        if g not in ref_counts[len(g)]:
            return 0.0
        return math.log2(ref_counts[len(g) - 1][g[:-1]] / ref_counts[len(g)][g])

    score = 0.0
    for n in range(max_n):
        gained = sum(info(g) * c for seg in matched[n] for g, c in seg.items() if c)
        score += gained / totals[n] if totals[n] > 0 else 0.0  # (mteval would divide by zero)
    ratio = hyp_len / avg_ref_len
    penalty = (
        1.0 if ratio >= 1 else 0.0 if ratio <= 0 else math.exp(-NIST_BETA * math.log(ratio) ** 2)
    )
    return penalty * score


# -----------------------------------------------------------------------------------------------
# ROUGE-L and CIDEr-D (pycocoevalcap, after the PTB tokenizer)

# Tokens the COCO scorers drop after the Stanford PTB tokenizer (its names for brackets included)
PTB_PUNCT = {
    "''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-', '.', '?', '!', ',', ':', '-', '--',
    '...', ';',
}  # fmt: skip
_PTB_CONTRACTION = re.compile(r"(?i)^(.+?)(n't|'s|'re|'ve|'m|'ll|'d)$")


def ptb_tokenize(text):
    """An approximation of `PTBTokenizer -preserveLines -lowerCase` followed by the COCO scorers'
    punctuation filter: lower-case; brackets and quotes go (PTB renames them, the filter drops them);
    ',', ';', ':', '?', '!' and a final '.' are split off (not inside numbers: 3.50, 1,000); '£', '$',
    '#', '%', '&', '*', '+', '=' and '/' between words become tokens of their own (PTB keeps them);
    clitics n't 's 're 've 'm 'll 'd are split off (PTB's "do n't"); hyphenated words stay whole.
    Not modelled: PTB's abbreviation list (a final '.' after 'St' or 'Mr' stays with the word there),
    its unicode normalisation, and a sentence-internal '.' that PTB splits off only before a capital."""
    text = text.lower().replace('\n', ' ')
    text = re.sub(r'[()\[\]{}"`]', ' ', text)
    text = text.replace('£', '#')  # PTB writes the pound sign as '#'
    text = re.sub(r'([$#%&*+=/])', r' \1 ', text)
    text = re.sub(r'(?<=\w)- ', ' - ', text)  # "non- child": the dash is a token of its own
    text = re.sub(r'(?:^|(?<=\s))\.(?=\w)', '. ', text)  # ".Blue": so is a leading period
    text = re.sub(r'(?<=\w)\.\.(?=\s|$)', ' . ', text)  # "rating.." ends a sentence twice
    text = re.sub(r'(?<=\w)\.,', '.\ue000,', text)  # "center.," keeps its period in PTB (marked)
    text = re.sub(r'([,;:?!])(?!\d)', r' \1 ', text)  # 1,000 keeps its comma
    text = re.sub(r'\.\.\.', ' ... ', text)
    out = []
    for tok in text.split():
        if tok.endswith('.\ue000'):
            out.append(tok[:-1])
            continue
        period = len(tok) > 1 and tok.endswith('.')  # "centre." -> "centre" "."
        tok = tok[:-1] if period else tok
        if len(tok) > 1 and tok.startswith("'") and not _PTB_CONTRACTION.match(tok):
            out.append("'")  # an opening single quote
            tok = tok[1:]
        m = _PTB_CONTRACTION.match(tok)
        if m:
            out += [m.group(1), m.group(2)]
        elif len(tok) > 1 and tok.endswith("'"):
            out += [tok[:-1], "'"]  # a closing single quote (or a plural possessive)
        else:
            out.append(tok)
        if period:
            out.append('.')
    return ' '.join(t for t in out if t not in PTB_PUNCT)


def lcs_length(a, b):
    """Length of the longest common subsequence of two token lists (dynamic programming, O(len a * len b))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyps, refs, beta=1.2, tokenize=ptb_tokenize):
    """Mean over items of ROUGE-L F (beta 1.2) from the best precision and the best recall of the
    LCS against any reference (pycocoevalcap's Rouge). Tokens split on single spaces, as there: an
    empty hypothesis is one empty token."""
    _check(hyps, refs)
    scores = []
    for hyp, rs in zip(hyps, refs):
        h = tokenize(hyp).split(' ')
        prec, rec = 0.0, 0.0
        for r in rs:
            r = tokenize(r).split(' ')
            lcs = lcs_length(r, h)
            prec, rec = max(prec, lcs / len(h)), max(rec, lcs / len(r))
        f = (1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec and rec else 0.0
        scores.append(f)
    return sum(scores) / len(scores)


def cider_d(hyps, refs, max_n=4, sigma=6.0, tokenize=ptb_tokenize):
    """CIDEr-D as pycocoevalcap computes it (which e2e-metrics reports as CIDEr): per n, the cosine of
    tf-idf n-gram vectors with the hypothesis's weights clipped at the reference's, a Gaussian
    penalty on the length difference, averaged over n = 1..4 and the references, times 10; the idf
    is over this corpus's items (an n-gram in every item's references weighs nothing). As there,
    the 'length' of a sentence is its number of bigrams."""
    _check(hyps, refs)

    def grams(s):
        words = tokenize(s).split()
        return Counter(
            tuple(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1)
        )

    hyp_grams = [grams(h) for h in hyps]
    ref_grams = [[grams(r) for r in rs] for rs in refs]
    doc_freq = Counter(g for rs in ref_grams for g in set().union(*rs))
    log_items = math.log(len(hyps))

    def tfidf(counts):
        vec = [{} for _ in range(max_n)]
        for g, tf in counts.items():
            vec[len(g) - 1][g] = tf * (log_items - math.log(max(1.0, doc_freq[g])))
        norms = [math.sqrt(sum(v * v for v in vn.values())) for vn in vec]
        bigrams = sum(tf for g, tf in counts.items() if len(g) == 2)
        return vec, norms, bigrams

    scores = []
    for hg, rgs in zip(hyp_grams, ref_grams):
        vh, nh, lh = tfidf(hg)
        total = 0.0
        for rg in rgs:
            vr, nr, lr = tfidf(rg)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                dot = sum(min(w, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, w in vh[n].items())
                if nh[n] and nr[n]:
                    dot /= nh[n] * nr[n]
                total += dot * penalty / max_n
        scores.append(10.0 * total / len(rgs))
    return sum(scores) / len(scores)


# -----------------------------------------------------------------------------------------------
# all of them, and the e2e-metrics plain-text files


def _check(hyps, refs):
    if len(hyps) != len(refs):
        raise ValueError(f'{len(hyps)} predictions but {len(refs)} groups of references')
    if not hyps:
        raise ValueError('nothing to score: no predictions')
    for i, rs in enumerate(refs):
        if not rs:
            raise ValueError(f'item {i + 1} has no reference')


def score_all(hyps, refs):
    """{'BLEU', 'NIST', 'ROUGE_L', 'CIDEr'}: the keys e2e-metrics prints (BLEU on the 0-1 scale)."""
    return {
        'BLEU': bleu(hyps, refs),
        'NIST': nist(hyps, refs),
        'ROUGE_L': rouge_l(hyps, refs),
        'CIDEr': cider_d(hyps, refs),
    }


def read_predictions(path):
    """One prediction per line (stripped), as e2e-metrics reads a system output file."""
    with open(path, encoding='utf-8') as f:
        return [line.strip() for line in f]


def read_references(path):
    """Groups of references, one per line, a blank line between groups (e2e-metrics' multi-reference
    format; each blank line starts a group, a trailing one does not). A file without blank lines
    holds one reference per item."""
    groups = [[]]
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if line:
                groups[-1].append(line)
            else:
                groups.append([])
    if not groups[-1]:
        groups.pop()
    if len(groups) == 1:  # no blank line: a single-reference file
        groups = [[r] for r in groups[0]]
    return groups


def write_references(path, groups):
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n\n'.join('\n'.join(g) for g in groups) + '\n')


def write_predictions(path, preds):
    with open(path, 'w', encoding='utf-8') as f:
        f.write(''.join(p.replace('\n', ' ').strip() + '\n' for p in preds))


def score_files(refs_path, preds_path):
    """score_all of two files; one-line errors when they do not pair up."""
    refs, preds = read_references(refs_path), read_predictions(preds_path)
    if len(refs) != len(preds):
        raise ValueError(
            f'{preds_path} has {len(preds)} predictions but {refs_path} has {len(refs)} groups of '
            f'references (a blank line between groups): give one prediction per group'
        )
    return score_all(preds, refs)
