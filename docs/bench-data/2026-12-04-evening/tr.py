import re,sys,glob,statistics as st
D=sys.argv[1]
def parse(f):
    out={}
    for line in open(f):
        m=re.match(r'\| (\d+) \| (\d+) \| (.*)',line)
        if not m: continue
        cell=(int(m.group(1)),int(m.group(2)))
        for pool,val,unit in re.findall(r'(\w+) ([\d.]+)([kM]) p99',m.group(3)):
            out[(cell,pool)]=float(val)*(1000 if unit=='M' else 1)
    return out
n=len(glob.glob(D+'/off-*.txt'))
off=[parse(f'{D}/off-{i}.txt') for i in range(1,n+1)]
on=[parse(f'{D}/on-{i}.txt') for i in range(1,n+1) if glob.glob(f'{D}/on-{i}.txt')]
n=min(len(off),len(on))
cells=sorted({c for c,p in off[0]})
print(f"pairs={n}")
print("| N | C | foreman off (median k req/s) | on | on/off of medians | paired on/off: median (range) | A/A off (even/odd) | A/A on | floor on/off |")
for c in cells:
    fo=[off[i][(c,'foreman')] for i in range(n)]; fn=[on[i][(c,'foreman')] for i in range(n)]
    lo=[off[i][(c,'floor')] for i in range(n)]; ln=[on[i][(c,'floor')] for i in range(n)]
    pr=[b/a for a,b in zip(fo,fn)]
    aa_off=st.median(fo[1::2])/st.median(fo[0::2]); aa_on=st.median(fn[1::2])/st.median(fn[0::2])
    print(f"| {c[0]} | {c[1]} | {st.median(fo):.0f} | {st.median(fn):.0f} | {st.median(fn)/st.median(fo):.2f} | {st.median(pr):.2f} ({min(pr):.2}–{max(pr):.2}) | {aa_off:.2f} | {aa_on:.2f} | {st.median(ln)/st.median(lo):.2f} |")
