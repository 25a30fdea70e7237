#!/usr/bin/python3
"""torch_simclr_probe.py - the SimCLR probe of README "Search quality".

Trains, in PyTorch, the wider Fashion-MNIST encoder of the README table
(conv3x3 c1-ReLU-maxpool, conv3x3 c2-ReLU-maxpool, conv3x3 c3-ReLU: a 7x7xc3
map) with the mirrored decoder, as SimCLR trains an encoder (T. Chen et al.,
ICML 2020): global average pooling, a 2-layer projection head, NT-Xent over
two augmented views (random resized crop of --scale..1 of the area, then a
horizontal flip with probability 1/2, via affine_grid/grid_sample), plus the
MSE reconstruction of the views (--wr; 0 drops it).  Then scores both the
pooled embedding (gap) and the flattened map (flat) as aesim's eval does:
precision@10 by label, the first --nq test images as queries against the
60,000 training images, cosine, raw and PCA-whitened (eps 1e-3 of the
largest variance, all / top-128 / top-64 components).  Labels are used only
to score.  --mnist-split DIR: MNIST split as the README's MNIST rows (t10k:
8,000 train and database, 2,000 queries).  Run with Debian's
/usr/bin/python3 (numpy, torch):
    /usr/bin/python3 bench/torch_simclr_probe.py --epochs 3
A decision aid, not a test: it asserts nothing.
"""
import argparse
import gzip
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument('--epochs', type=int, default=10); p.add_argument('--bs', type=int, default=256)
p.add_argument('--tau', type=float, default=0.5); p.add_argument('--wc', type=float, default=1.0)
p.add_argument('--wr', type=float, default=1.0); p.add_argument('--head', type=int, default=1)
p.add_argument('--ch', default='32,64,64'); p.add_argument('--scale', type=float, default=0.6)
p.add_argument('--lr', type=float, default=1e-3); p.add_argument('--nq', type=int, default=2000)
p.add_argument('--seed', type=int, default=0); p.add_argument('--max_train', type=int, default=60000)
p.add_argument('--data', default='/usr/share/datasets/fashion-mnist')
p.add_argument('--mnist-split', metavar='DIR', default='',
               help="MNIST as README's MNIST rows: DIR/t10k-*: the first 8,000 images train and are the "
                    "database, the last 2,000 are the queries (the shared copy has no training images)")
p.add_argument('--flip', type=int, default=1, help='1: horizontal flips in the views (0 for digits)')
p.add_argument('--shift', type=float, default=0.0, help='extra random translation, fraction of the half-side')
p.add_argument('--threads', type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed); np.random.seed(a.seed)
def idx(f, off): return np.frombuffer(gzip.open(f).read(), np.uint8, offset=off)
D = a.data + '/'
xtr = idx(D+'train-images-idx3-ubyte.gz',16).reshape(-1,1,28,28).astype(np.float32)/255
ytr = idx(D+'train-labels-idx1-ubyte.gz',8)
xte = idx(D+'t10k-images-idx3-ubyte.gz',16).reshape(-1,1,28,28).astype(np.float32)/255
yte = idx(D+'t10k-labels-idx1-ubyte.gz',8)
xtr=xtr[:a.max_train]; ytr=ytr[:a.max_train]
if a.mnist_split:
    M = a.mnist_split + '/'
    xa = idx(M+'t10k-images-idx3-ubyte.gz',16).reshape(-1,1,28,28).astype(np.float32)/255
    ya = idx(M+'t10k-labels-idx1-ubyte.gz',8)
    xtr, ytr, xte, yte = xa[:8000], ya[:8000], xa[8000:], ya[8000:]
c1,c2,c3 = map(int, a.ch.split(','))
enc = nn.Sequential(nn.Conv2d(1,c1,3,padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(c1,c2,3,padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(c2,c3,3,padding=1), nn.ReLU())
dec = nn.Sequential(nn.Conv2d(c3,32,3,padding=1), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(32,32,3,padding=1), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(32,1,3,padding=1), nn.Sigmoid())
head = nn.Sequential(nn.Linear(c3,c3), nn.ReLU(), nn.Linear(c3,c3)) if a.head else nn.Identity()
params = list(enc.parameters())+list(dec.parameters())+list(head.parameters())
opt = torch.optim.Adam(params, lr=a.lr)
def aug(x):
    n = x.shape[0]
    s = torch.empty(n).uniform_(a.scale, 1.0).sqrt()  # area scale -> side
    tx = (1-s)*torch.empty(n).uniform_(-1,1) + a.shift*torch.empty(n).uniform_(-1,1)
    ty = (1-s)*torch.empty(n).uniform_(-1,1) + a.shift*torch.empty(n).uniform_(-1,1)
    fl = torch.where(torch.rand(n)<0.5, -1.0, 1.0) if a.flip else torch.ones(n)
    th = torch.zeros(n,2,3); th[:,0,0]=s*fl; th[:,1,1]=s; th[:,0,2]=tx; th[:,1,2]=ty
    g = F.affine_grid(th, x.shape, align_corners=False)
    return F.grid_sample(x, g, align_corners=False, padding_mode='zeros')
def ntxent(z, tau):
    z = F.normalize(z, dim=1); n = z.shape[0]//2
    s = z @ z.t() / tau; s.fill_diagonal_(-1e9)
    t = torch.cat([torch.arange(n,2*n), torch.arange(0,n)])
    return F.cross_entropy(s, t)
X = torch.from_numpy(xtr); t0=time.time()
for ep in range(a.epochs):
    perm = torch.randperm(len(X)); tl=[0,0,0]
    for i in range(0, len(X)-a.bs+1, a.bs):
        xb = X[perm[i:i+a.bs]]
        loss = 0
        if a.wc>0:
            v = torch.cat([aug(xb), aug(xb)])
            h = enc(v); z = head(h.mean((2,3)))
            lc = ntxent(z, a.tau); loss = loss + a.wc*lc; tl[1]+=lc.item()
            if a.wr>0:
                lr_ = F.mse_loss(dec(h), v); loss = loss + a.wr*lr_; tl[0]+=lr_.item()
        else:
            lr_ = F.mse_loss(dec(enc(xb)), xb); loss = lr_; tl[0]+=lr_.item()
        opt.zero_grad(); loss.backward(); opt.step(); tl[2]+=1
    print(f'ep {ep+1} rec {tl[0]/tl[2]:.4f} ntx {tl[1]/tl[2]:.3f} t {time.time()-t0:.0f}s', flush=True)
@torch.no_grad()
def embed(x, kind):
    out=[]
    for i in range(0,len(x),1000):
        h = enc(torch.from_numpy(x[i:i+1000]))
        out.append(h.mean((2,3)) if kind=='gap' else h.flatten(1))
    return torch.cat(out).numpy().astype(np.float64)
def p10(db, q, yd, yq, k=10):
    dbn = db/np.linalg.norm(db,axis=1,keepdims=True).clip(1e-12); qn=q/np.linalg.norm(q,axis=1,keepdims=True).clip(1e-12)
    s = qn@dbn.T; nn_ = np.argpartition(-s, k, axis=1)[:,:k]
    return (yd[nn_]==yq[:,None]).mean()
def white(db, q, m=None, eps=1e-3):
    mu=db.mean(0); c=np.cov((db-mu).T); w,v=np.linalg.eigh(c); o=np.argsort(-w); w=w[o]; v=v[:,o]
    if m: w=w[:m]; v=v[:,:m]
    f=v/np.sqrt(w+eps*w[0]); return (db-mu)@f, (q-mu)@f
q = xte[:a.nq]; yq=yte[:a.nq]
for kind in ['gap','flat']:
    db=embed(xtr,kind); qq=embed(q,kind)
    r=[p10(db,qq,ytr,yq)]
    for m in [None,128,64]:
        if m and m>=db.shape[1]: continue
        d2,q2=white(db,qq,m); r.append(p10(d2,q2,ytr,yq))
    print(kind, db.shape[1], 'cos %.4f white(all,128,64) %s'%(r[0], ' '.join('%.4f'%x for x in r[1:])), flush=True)
