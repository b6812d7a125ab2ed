#!/usr/bin/env bash
# Fetch GitHub's OIDC token for Alibaba Cloud STS and point the credential chain at it.
set -euo pipefail
token_file="${RUNNER_TEMP}/alibaba-oidc-token"
curl -sSf -H "Authorization: bearer ${ACTIONS_ID_TOKEN_REQUEST_TOKEN}" \
  "${ACTIONS_ID_TOKEN_REQUEST_URL}&audience=sts.aliyuncs.com" | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])' > "$token_file"
chmod 600 "$token_file"
echo "ALIBABA_CLOUD_OIDC_TOKEN_FILE=$token_file" >> "$GITHUB_ENV"
