#!/usr/bin/env python3
"""Validate Kubernetes manifests against their CustomResourceDefinitions.

    validate.py SCHEMA_DIR MANIFEST...

Every YAML document in each MANIFEST is matched by `apiVersion` and `kind`
to a served version of a CRD in SCHEMA_DIR, and validated against that
version's `openAPIV3Schema` read as a *structural* schema, the way an API
server with strict field validation (`kubectl apply`) reads it:

- a field no schema declares is an error, unless the object says
  `x-kubernetes-preserve-unknown-fields: true`;
- `nullable: true` also allows null; `x-kubernetes-int-or-string: true`
  allows an integer or a string;
- `apiVersion`, `kind` and `metadata` (as ObjectMeta's common fields) are
  allowed at the root, as the API server adds them to every CRD.

`x-kubernetes-validations` (CEL) rules are not evaluated. A document with no
matching CRD is an error. Prints one line per document; exits 1 on any
error, 2 on bad usage.
"""
import copy
import pathlib
import sys

import jsonschema
import yaml

# ObjectMeta fields a manifest may set (the rest are the server's).
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}

VALUE_VALIDATION = ("anyOf", "oneOf", "allOf")


def structural(schema, in_value_validation=False):
    """The schema as a JSON Schema (draft 4) with Kubernetes' pruning rules."""
    s = copy.copy(schema)
    is_object = s.get("type") == "object"
    for key in VALUE_VALIDATION:
        if key in s:
            s[key] = [structural(branch, True) for branch in s[key]]
    if "not" in s:
        s["not"] = structural(s["not"], True)
    if "properties" in s:
        s["properties"] = {name: structural(sub) for name, sub in s["properties"].items()}
    if isinstance(s.get("items"), dict):
        s["items"] = structural(s["items"])
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = structural(s["additionalProperties"])
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s["type"] = ["integer", "string"]
    if s.pop("nullable", False) and "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        s["type"] = types + ["null"]
    preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
    # Only the structural part prunes: value validations (anyOf/...) do not.
    if is_object and not preserve and not in_value_validation and "additionalProperties" not in s:
        s["additionalProperties"] = False
    for key in list(s):
        if key.startswith("x-kubernetes-"):
            del s[key]
    return s


def load_crds(schema_dir):
    """{(apiVersion, kind): schema} for every served version."""
    crds = {}
    for path in sorted(pathlib.Path(schema_dir).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                root = structural(version["schema"]["openAPIV3Schema"])
                api_version = f"{spec['group']}/{version['name']}"
                kind = spec["names"]["kind"]
                root.setdefault("properties", {})
                root["properties"]["apiVersion"] = {"enum": [api_version]}
                root["properties"]["kind"] = {"enum": [kind]}
                root["properties"]["metadata"] = OBJECT_META
                root["required"] = sorted(set(root.get("required", [])) | {"apiVersion", "kind", "metadata"})
                root["additionalProperties"] = False
                crds[(api_version, kind)] = (root, path.name)
    return crds


def location(error):
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    crds = load_crds(argv[1])
    if not crds:
        print(f"no CustomResourceDefinition in {argv[1]}", file=sys.stderr)
        return 2
    failed = 0
    checked = 0
    for manifest in argv[2:]:
        for index, doc in enumerate(yaml.safe_load_all(pathlib.Path(manifest).read_text())):
            if doc is None:
                continue
            checked += 1
            name = f"{manifest} document {index + 1} ({doc.get('kind')} {doc.get('metadata', {}).get('name')})"
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key not in crds:
                print(f"FAIL {name}: no CRD in {argv[1]} serves {key[0]} {key[1]}")
                failed += 1
                continue
            schema, source = crds[key]
            validator = jsonschema.Draft4Validator(schema)
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            if errors:
                failed += 1
                for error in errors:
                    print(f"FAIL {name}: at {location(error)}: {error.message}")
            else:
                print(f"ok   {name} against {source}")
    print(f"{checked - failed} valid, {failed} invalid")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
