"""The Vocos decoder's fixed numbers, without torch: the torch decoder (``vocos``), the chunk
schedule (``runtime.chunks``) and the torch-free decoder (``soprano.lean``) read them here."""
UPSCALE = 4                          # decoder frames per hidden state
N_FFT = 2048
HOP = 512
SAMPLES_PER_TOKEN = UPSCALE * HOP
LN_EPS = 1e-6
MAX_MAGNITUDE = 100.0                # the head clips exp(log-magnitude) here (upstream's ISTFTHead)
