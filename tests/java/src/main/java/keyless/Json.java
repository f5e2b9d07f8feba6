package keyless;

import java.util.Map;
import java.util.stream.Collectors;

/** One JSON object on stdout, for the test to read (values: strings, numbers, booleans, objects of them). */
final class Json {
    private Json() {}

    static void print(Map<String, Object> fields) {
        System.out.println(object(fields));
    }

    private static String object(Map<?, ?> fields) {
        String body = fields.entrySet().stream()
            .map(e -> quote(String.valueOf(e.getKey())) + ":" + value(e.getValue()))
            .collect(Collectors.joining(","));
        return "{" + body + "}";
    }

    private static String value(Object v) {
        if (v instanceof Map<?, ?> fields) {
            return object(fields);
        }
        return v instanceof Number || v instanceof Boolean ? v.toString() : quote(String.valueOf(v));
    }

    private static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }
}
