"""Test accuracy of Keras 3's MNIST convnet after 3 epochs, per seed: the reference for
tests/convnet_accuracy.rs. Run with Keras 3 and TensorFlow installed (for instance the peers'
benchmark environment): `python tests/python/keras_convnet_accuracy.py 1 2 3 4 5`.

Keras 3.x on TensorFlow, 2 cores, 2026-11-28: seeds 1-5 -> 0.9849, 0.9848, 0.9849, 0.9859, 0.9847.
"""
import os, sys, gzip, numpy as np
os.environ["KERAS_BACKEND"]="tensorflow"
import keras
def idx(p):
    with gzip.open(p) as f: d=f.read()
    nd=d[3]; dims=[int.from_bytes(d[4+4*i:8+4*i],'big') for i in range(nd)]
    return np.frombuffer(d,np.uint8,offset=4+4*nd).reshape(dims)
D=os.path.join(os.path.dirname(__file__), "../../../shared/data/mnist/")
x=idx(D+"train-images-idx3-ubyte.gz").astype("float32")[...,None]/255; y=keras.utils.to_categorical(idx(D+"train-labels-idx1-ubyte.gz"),10)
xt=idx(D+"t10k-images-idx3-ubyte.gz").astype("float32")[...,None]/255; yt=keras.utils.to_categorical(idx(D+"t10k-labels-idx1-ubyte.gz"),10)
for seed in [int(s) for s in sys.argv[1:]]:
    keras.utils.set_random_seed(seed)
    m=keras.Sequential([keras.Input((28,28,1)),keras.layers.Conv2D(32,3,activation="relu"),keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64,3,activation="relu"),keras.layers.MaxPooling2D(2),keras.layers.Flatten(),keras.layers.Dropout(0.5),
        keras.layers.Dense(10,activation="softmax")])
    m.compile(loss="categorical_crossentropy",optimizer="adam",metrics=["accuracy"])
    m.fit(x,y,batch_size=128,epochs=3,validation_split=0.1,verbose=0)
    print("keras seed",seed,"test acc",m.evaluate(xt,yt,verbose=0)[1],flush=True)
