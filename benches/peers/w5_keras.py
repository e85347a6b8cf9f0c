# W5 in Keras: LSTM(64) over 50 steps of 32 features, Dense(1), MSE, Adam, batch 32, 512 samples
# per epoch; samples/s, the median of three epochs after a warm-up, as `workloads -- w5` times it.
# With `gru` as argument, GRU(64) in place of the LSTM.
#   KERAS_BACKEND=jax python benches/peers/w5_keras.py [gru]
import os, sys, time
os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "jax")
import numpy as np, keras
cell = keras.layers.GRU if sys.argv[1:] == ["gru"] else keras.layers.LSTM
m = keras.Sequential([keras.Input((50, 32)), cell(64), keras.layers.Dense(1)])
m.compile("adam", "mse")
rs = np.random.RandomState(0)
x = rs.uniform(-1, 1, (512, 50, 32)).astype("f4"); y = rs.uniform(-1, 1, (512, 1)).astype("f4")
m.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
rates = []
for _ in range(3):
    t = time.time(); m.fit(x, y, batch_size=32, epochs=1, verbose=0); rates.append(512 / (time.time() - t))
print(keras.backend.backend(), sorted(rates)[1])
