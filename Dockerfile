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
COPY requirements.txt .
# torch from the index that matches the base image (CPU wheels by default), then the rest
RUN pip install --index-url ${TORCH_INDEX} --extra-index-url https://pypi.org/simple -r requirements.txt

COPY . .
# The main job, exactly as in the README: train on data/ with the bundled encoder, save to outputs/.
CMD ["python", "train.py"]
