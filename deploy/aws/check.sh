#!/usr/bin/env bash
# Checks the AWS shape without an AWS account:
#   1. cfn-lint on deploy/aws/template.yaml (fails on errors; warnings are printed)
#   2. the real SAM transform (aws-sam-translator, offline) and cfn-lint on its output, so what
#      CloudFormation will actually create is linted too (aliases, versions, merged Globals)
#   3. deploy/aws/build.sh (the release build for glibc 2.34, the glibc check, the zip)
#
#   deploy/aws/check.sh [--no-build] [build.sh arguments, e.g. --arch arm64]
set -euo pipefail

CFN_LINT_VERSION=1.58.0
SAM_TRANSLATOR_VERSION=1.115.0

build=1
args=()
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        *) args+=("$a") ;;
    esac
done

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
. scripts/python-venv.sh
need_pip "cfn-lint==$CFN_LINT_VERSION"
need_pip "aws-sam-translator==$SAM_TRANSLATOR_VERSION"

# cfn-lint's exit code is a bit mask: 2 errors, 4 warnings, 8 informational.
lint() { # FILE LABEL
    local rc=0
    "$venv/bin/cfn-lint" --include-checks I -- "$1" || rc=$?
    if (( rc & 2 )); then
        echo "FAIL cfn-lint $2: errors (above)"
        exit 1
    fi
    if (( rc & 4 )); then
        echo "ok   cfn-lint $2: 0 errors, with warnings (above; each is explained in docs/aws.md)"
    elif (( rc & 8 )); then
        echo "ok   cfn-lint $2: 0 errors, 0 warnings, informational notes (above)"
    else
        echo "ok   cfn-lint $2: 0 errors, 0 warnings"
    fi
}

echo "== cfn-lint $CFN_LINT_VERSION deploy/aws/template.yaml"
lint deploy/aws/template.yaml "template.yaml"

echo "== SAM transform (aws-sam-translator $SAM_TRANSLATOR_VERSION, offline) + cfn-lint of the result"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" "$venv/bin/python" - deploy/aws/template.yaml "$out/transformed.json" <<'PY'
# No AWS calls: CodeUri is replaced by an S3 URI as `sam package` would do, and the template
# names no SAM managed policies (each function has its own AWS::IAM::Role).
import json, sys, yaml
from samtranslator.translator.transform import transform
from samtranslator.model.exceptions import InvalidDocumentException

class Loader(yaml.SafeLoader):
    pass

def tag(loader, suffix, node):
    key = "Ref" if suffix == "Ref" else "Fn::" + suffix
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {key: value}

Loader.add_multi_constructor("!", tag)
template = yaml.load(open(sys.argv[1]), Loader=Loader)

def packaged(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k == "CodeUri" and isinstance(v, str) and not v.startswith("s3://"):
                o[k] = "s3://example-bucket/dynamowave-lambda.zip"
            else:
                packaged(v)
    elif isinstance(o, list):
        for v in o:
            packaged(v)

packaged(template)

class NoManagedPolicies:
    def load(self):
        return {}

try:
    result = transform(template, {}, NoManagedPolicies())
except InvalidDocumentException as e:
    for cause in e.causes:
        print("SAM transform error:", cause.message)
    sys.exit(1)
json.dump(result, open(sys.argv[2], "w"), indent=1)
print(f"SAM transform ok: {len(result['Resources'])} CloudFormation resources")
PY
lint "$out/transformed.json" "transformed template"

if (( build )); then
    echo "== deploy/aws/build.sh ${args[*]:-}"
    deploy/aws/build.sh "${args[@]}"
fi
echo "check.sh: all checks passed"
