import json, glob, os, re, csv
rt_test = {}
for r in csv.DictReader(open('/work/main/experiments/demo-robustness/results.csv')):
    if r['threads'] == '2': rt_test[(r['seed'], r['method'])] = r
def dev(p):
    try: m = json.load(open(p))['metrics']['dev']; return m
    except Exception: return None
for d in sorted(glob.glob('/root/trial/*-*-*-*/')):
    name = os.path.basename(d.rstrip('/')); seed = name.rsplit('-', 1)[1]
    log = open(d.rstrip('/') + '.log').read()
    t = re.search(r'\[test\] CACC ([\d.]+).*LFR ([\d.]+)\s+PACC ([\d.]+)\s+target shift gap ([-\d.]+)', log)
    rt = rt_test.get((seed, 'retrain'))
    line = f"{name:28s}"
    if t and rt:
        c, l, p, g = map(float, t.groups())
        line += f" TEST cacc {c:5.1f} pacc {p:5.1f} (RT {float(rt['pacc']):5.1f}) d {p-float(rt['pacc']):+5.1f} gap {g - float(rt['shift_gap']):+5.1f}"
    dv, rd = dev(d + 'dev.json'), dev(f'/root/trial/ref-retrain-{seed}.json')
    if dv and rd:
        g = dv['target_shift_gap'] - rd['target_shift_gap']
        line += f" | DEV cacc {dv['cacc']:5.1f} d {dv['pacc']-rd['pacc']:+5.1f} gap {g:+5.1f}"
    print(line)
for seed in range(42, 47):
    rd = dev(f'/root/trial/ref-retrain-{seed}.json')
    for m in ('rga', 'ga'):
        dv = dev(f'/root/trial/ref-{m}-{seed}.json')
        if dv and rd:
            print(f"const {m} {seed}: DEV cacc {dv['cacc']:5.1f} d {dv['pacc']-rd['pacc']:+5.1f} gap {dv['target_shift_gap']-rd['target_shift_gap']:+5.1f}  RT cacc {rd['cacc']:.1f}")
