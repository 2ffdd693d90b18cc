FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && useradd --system --create-home stateport \
    && mkdir -p /var/lib/stateport && chown stateport /var/lib/stateport
USER stateport
EXPOSE 8080
CMD ["stateport", "serve", "--host", "0.0.0.0", "--port", "8080"]
