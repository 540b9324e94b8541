import torch, time
from diffusers import UNet2DConditionModel
torch.set_num_threads(1)
x = torch.randn(2,4,16,16); t = torch.tensor(500); e = torch.randn(2,16,128)
def bench(m, n=60):
    with torch.no_grad():
        for _ in range(5): m(x,t,encoder_hidden_states=e)
        best=1e9
        for r in range(3):
            t0=time.process_time()
            for _ in range(n): m(x,t,encoder_hidden_states=e)
            best=min(best,(time.process_time()-t0)/n*1000)
    return best
def mk(boc=(32,64,128), down=("DownBlock2D","CrossAttnDownBlock2D","CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D","CrossAttnUpBlock2D","UpBlock2D"), lpb=1, heads=None, mid="UNetMidBlock2DCrossAttn", lin=False, groups=16):
    heads = heads or tuple(max(1,c//32) for c in boc)
    return UNet2DConditionModel(sample_size=16,in_channels=4,out_channels=4,down_block_types=down,up_block_types=up,block_out_channels=boc,layers_per_block=lpb,cross_attention_dim=128,attention_head_dim=heads,norm_num_groups=groups,mid_block_type=mid,use_linear_projection=lin).eval()
cands = {
 "current": mk(heads=(1,2,4)),
 "current_linproj": mk(heads=(1,2,4), lin=True),
 "32,64,96": mk(boc=(32,64,96)),
 "32,48,96": mk(boc=(32,48,96)),
 "2lvl 64,128": mk(boc=(64,128), down=("CrossAttnDownBlock2D","CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D","CrossAttnUpBlock2D")),
 "2lvl 48,96 noattn16": mk(boc=(48,96), down=("DownBlock2D","CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D","UpBlock2D")),
 "attn only 4x4": mk(down=("DownBlock2D","DownBlock2D","CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D","UpBlock2D","UpBlock2D")),
}
for k,m in {}.items():
    print(f"{k:25s} {sum(p.numel() for p in m.parameters())/1e6:.2f}M  {bench(m):.2f} ms", flush=True)
print("----")
def bench_cl(m, n=60):
    m = m.to(memory_format=torch.channels_last)
    global x
    x0 = x; x = x.contiguous(memory_format=torch.channels_last)
    r = bench(m, n); x = x0; return r
c2 = {
 "32,48,96 attn4": mk(boc=(32,48,96), down=("DownBlock2D","DownBlock2D","CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D","UpBlock2D","UpBlock2D")),
 "32,64,96 attn4": mk(boc=(32,64,96), down=("DownBlock2D","DownBlock2D","CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D","UpBlock2D","UpBlock2D")),
 "32,64,128 attn4 cl": None,
 "32,48,96 cl": None,
}
for k,m in c2.items():
    if k=="32,64,128 attn4 cl": m = mk(down=("DownBlock2D","DownBlock2D","CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D","UpBlock2D","UpBlock2D")); print(f"{k:25s} {bench_cl(m):.2f}"); continue
    if k=="32,48,96 cl": m = mk(boc=(32,48,96)); print(f"{k:25s} {bench_cl(m):.2f}"); continue
    print(f"{k:25s} {sum(p.numel() for p in m.parameters())/1e6:.2f}M  {bench(m):.2f} ms  cl {bench_cl(m):.2f}", flush=True)
