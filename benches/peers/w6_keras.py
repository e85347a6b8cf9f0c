import os, time
os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "jax")
import numpy as np, keras
L = keras.layers
len_, d, n = 64, 64, 512
ids_in = keras.Input((len_,)); pos_in = keras.Input((len_,))
e = L.Embedding(1000, d)(ids_in); p = L.Embedding(len_, d)(pos_in)
h = L.Add()([e, p])
a = L.MultiHeadAttention(4, 16)(h, h)
h = L.LayerNormalization()(L.Add()([h, a]))
f = L.Dense(d)(L.Dense(128, activation="relu")(h))
h = L.LayerNormalization()(L.Add()([h, f]))
out = L.Dense(2)(L.GlobalAveragePooling1D()(h))
m = keras.Model([ids_in, pos_in], out)
m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rs = np.random.RandomState(0)
ids = rs.randint(0, 1000, (n, len_)).astype("f4"); pos = np.tile(np.arange(len_, dtype="f4"), (n, 1))
y = rs.randint(0, 2, (n, 1)).astype("f4")
m.fit([ids[:64], pos[:64]], y[:64], batch_size=32, epochs=1, verbose=0)
rates = []
for _ in range(3):
    t = time.time(); m.fit([ids, pos], y, batch_size=32, epochs=1, verbose=0); rates.append(n / (time.time() - t))
print(keras.backend.backend(), sorted(rates)[1])
