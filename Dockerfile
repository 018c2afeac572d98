# CPU image by default; for a GPU image pass a CUDA base and a torch build for it, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t multitask-gpu .
# (a CUDA base image needs python3 and pip installed first; see the apt-get line below)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1

RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY requirements.txt requirements-serve.txt ./
# torch from the index that matches the base image (CPU wheels by default), then the rest; requirements-serve.txt is
# requirements.txt plus the HTTP server (serve.py), so that one image both trains and serves.
RUN pip install --index-url ${TORCH_INDEX} --extra-index-url https://pypi.org/simple -r requirements-serve.txt

COPY . .
EXPOSE 8000

# Serving a trained model (docs/usage.md), e.g. the one the default command saved into a mounted outputs/:
#   docker run --rm -p 8000:8000 -v $PWD/outputs:/app/outputs multitask \
#       python serve.py --model outputs/multitask-minilm --host 0.0.0.0 --port 8000
# The health check asks serve.py's /health (200 once the model is loaded) when serve.py runs in the container; while
# the container runs anything else (the default command trains for minutes and serves nothing) it reports healthy.
# It looks for serve.py among the processes' command lines (all of them: PID 1 is docker-init under `--init`), not
# counting its own or its shell's, whose code names serve.py too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import glob, os, urllib.request; me = [f'/proc/{pid}/cmdline' for pid in (os.getpid(), os.getppid())]; serving = any(b'serve.py' in open(p, 'rb').read() for p in glob.glob('/proc/[0-9]*/cmdline') if p not in me); serving and urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1

# The main job, exactly as in the README: train on data/ with the bundled encoder, save to outputs/.
CMD ["python", "train.py"]
