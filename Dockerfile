# soprano-tts server image. Targets:
#   cpu  (default): docker build -t soprano-tts .
#   cuda:           docker build --target cuda -t soprano-tts:cuda .
# The model is fetched into the Hugging Face cache at first start; mount a volume on
# /models to keep it (or pre-fill it with `soprano-tts download`). SOPRANO_HOST=0.0.0.0: the
# server binds loopback by default, which no one outside the container could reach.

FROM python:3.11-slim-bookworm AS cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ cmake make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml CMakeLists.txt README.md ./
COPY csrc csrc
COPY kernels kernels
COPY soprano soprano
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && SOPRANO_CUDA=OFF pip install --no-cache-dir . \
    && rm -rf /src
WORKDIR /
ENV HF_HOME=/models SOPRANO_HOST=0.0.0.0 SOPRANO_PORT=8080
VOLUME ["/models"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
CMD ["soprano-tts", "serve"]

FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS cuda
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv g++ cmake make \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml CMakeLists.txt README.md ./
COPY csrc csrc
COPY kernels kernels
COPY soprano soprano
RUN pip install --no-cache-dir torch==2.11.0 --index-url https://download.pytorch.org/whl/cu130 \
    && SOPRANO_CUDA=ON pip install --no-cache-dir . \
    && rm -rf /src
WORKDIR /
ENV HF_HOME=/models SOPRANO_HOST=0.0.0.0 SOPRANO_PORT=8080 SOPRANO_DEVICE=cuda
VOLUME ["/models"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
CMD ["soprano-tts", "serve"]
