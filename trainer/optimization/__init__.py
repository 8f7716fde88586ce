"""How the weights move: optimizers, learning-rate schedules, loss scaling, weight averages.

optimizers.py      the optimizer a RunConfig names (SGD with momentum, AdamW, ...)
schedules.py       learning-rate schedules over steps (warmup, cosine, step decay)
loss_scaling.py    the float16 loss scaler (dynamic or fixed)
ema.py             the exponential moving average of the weights
"""
