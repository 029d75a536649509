from jaxops.inference import infer_function_schema, infer_schema
from jaxops.schema import FunctionSchema, parse_schema
