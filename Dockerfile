# The GPU operator image: `gpu-operator run` is the Deployment's command; the chart's hook Jobs run
# `gpu-operator crds --apply` and `python /hook/cleanup.py` with it.
#   docker build -t gpu-operator:0.1.0 .
# Without Docker, `make image` builds the same image (hack/build-image.sh, tested by e2e/test_image.py).
FROM python:3.11-slim AS build
WORKDIR /src
# README.md: pyproject.toml names it as the package's readme.
COPY pyproject.toml README.md ./
COPY operator/ operator/
# A wheel of the package only (no dev extras), installed below into a clean layer.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# A named user: kopf's peering identity calls getpass.getuser(), which fails for a uid without a passwd entry.
RUN useradd --uid 65532 --user-group --create-home --home-dir /home/nonroot --shell /usr/sbin/nologin nonroot
ENV HOME=/home/nonroot
# Numeric, so Kubernetes can check runAsNonRoot; the chart runs the pod as this user too.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["gpu-operator"]
CMD ["run"]
