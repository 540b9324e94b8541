import torch, time
exec(open('/tmp/cands.py').read().split("cands = {")[0])
def rate(m, b=32, n=15):
    m.train(); opt = torch.optim.AdamW(m.parameters(), 1e-4)
    xb = torch.randn(b,4,16,16); tb = torch.randint(0,1000,(b,)); eb = torch.randn(b,16,128)
    for i in range(3+n):
        if i==3: t0=time.process_time()
        out = m(xb,tb,encoder_hidden_states=eb).sample
        loss = out.pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    return (time.process_time()-t0)/n
for k,m in {"current": mk(heads=(1,2,4)), "32,64,96 attn4": mk(boc=(32,64,96), down=("DownBlock2D","DownBlock2D","CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D","UpBlock2D","UpBlock2D")), "32,48,96 attn4": mk(boc=(32,48,96), down=("DownBlock2D","DownBlock2D","CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D","UpBlock2D","UpBlock2D"))}.items():
    s = rate(m); print(k, f"{s*1000:.0f} ms/step  {60/s:.0f} steps/min", flush=True)
