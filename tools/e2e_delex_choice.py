"""Which slots should config/e2e_small.py delexicalise? A validation split whose food value
the model never saw in training (as 394 of the 630 test MRs name a food the devset never shows) judges
it; the devset's random 10% cannot, its MRs holding the training values only.

    python tools/e2e_delex_choice.py /work/e2e_shift    # writes the folder, prints its counts

writes, in the official layout that --data_path reads with e2e_train='trainset':
  trainset.csv         every devset row whose MR has no food[English] (food[Chinese] or no food)
  devset.csv           the rows of 60 MRs drawn (random.Random(1337)) from the devset MRs with food[English]
  testset_w_refs.csv   a copy of the real test file (read by the loader; never decoded here)
The commands that train, decode and decide are in docs/e2e.md ("Which slots to delexicalise").
"""

import csv
import os
import random
import shutil
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from sources.files import parse_mr  # noqa: E402

SEED, N_VAL, HELD_OUT = 1337, 60, 'English'


def write_rows(path, rows):
    with open(path, 'w', encoding='utf-8', newline='') as f:
        w = csv.writer(f)
        w.writerow(['mr', 'ref'])
        w.writerows((r['mr'], r['ref']) for r in rows)


def build(out):
    e2e = os.path.join(ROOT, 'data', 'e2e')
    with open(os.path.join(e2e, 'devset.csv'), encoding='utf-8-sig', newline='') as f:
        rows = list(csv.DictReader(f))
    food = {r['mr']: parse_mr(r['mr']).get('food') for r in rows}
    held = sorted(mr for mr in food if food[mr] == HELD_OUT)
    val = set(random.Random(SEED).sample(held, N_VAL))
    train_rows = [r for r in rows if food[r['mr']] != HELD_OUT]
    val_rows = [r for r in rows if r['mr'] in val]
    os.makedirs(out, exist_ok=True)
    write_rows(os.path.join(out, 'trainset.csv'), train_rows)
    write_rows(os.path.join(out, 'devset.csv'), val_rows)
    shutil.copy(os.path.join(e2e, 'testset_w_refs.csv'), os.path.join(out, 'testset_w_refs.csv'))
    for name, part in (('train', train_rows), ('val', val_rows)):
        mrs = {r['mr'] for r in part}
        foods = Counter(food[mr] for mr in mrs)
        eat = Counter(parse_mr(mr).get('eatType') for mr in mrs)
        print(f'{name}: {len(part)} rows, {len(mrs)} MRs; food {dict(foods)}; eatType {dict(eat)}')


if __name__ == '__main__':
    build(sys.argv[1] if len(sys.argv) > 1 else '/work/e2e_shift')
