export async function runConfigValidate(_a: unknown): Promise<number> { throw new Error("todo"); }
